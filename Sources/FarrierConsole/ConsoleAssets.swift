/// The console's stylesheet and script, served from the binary: no build step, nothing fetched
/// from anywhere else. The script only confirms actions and applies server-sent events to the
/// page, with textContent (never markup from an event).
enum ConsoleAssets {
    static let css = """
        body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
        header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#1d2330;color:#fff}
        header a{color:#cde;margin-right:.8em}.brand{font-weight:700;margin-right:1em}
        nav{display:flex;gap:.5em;align-items:center;flex:1}.who{margin-left:auto;color:#abc}
        main{padding:1em 1.5em}h1{margin:.2em 0 .6em}h2{margin:1.2em 0 .4em}
        .inline{display:inline}.action{margin-right:.4em}button{cursor:pointer}
        .error{color:#a00;font-weight:600}.notice{color:#060}.hint{color:#667}
        .counts .count{display:inline-block;margin:0 .8em .3em 0;padding:.1em .4em;border-radius:3px}
        .filter input{width:32em}
        .site{margin-bottom:1em}.zone{margin-left:.5em}.rack{display:inline-block;vertical-align:top;margin:0 1em 1em 0}
        .rack h4{margin:.2em 0;font-weight:500;color:#556}
        .cells{display:grid;grid-template-columns:repeat(4,7.5em);gap:3px}
        .cell{display:block;padding:.3em;border-radius:3px;color:#111;text-decoration:none;font-size:12px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
        .s-discovered{background:#ddd}.s-enrolled{background:#cfd8e3}.s-commissioning,.s-deploying,.s-releasing,.s-rescuing,.s-exiting-rescue{background:#ffd56b}
        .s-ready{background:#9fd3a8}.s-deployed{background:#6fa8dc}.s-rescue{background:#c9a0dc}.s-failed{background:#e06666;color:#fff}
        dl.facts{display:grid;grid-template-columns:10em 1fr;gap:.2em 1em}dt{color:#556}dd{margin:0}
        table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #dde;text-align:left;vertical-align:top}
        svg.waterfall text{font:11px monospace;fill:#333}svg.waterfall text.took{fill:#667}svg.waterfall text.axis{fill:#889}
        svg.waterfall .stage-dhcp rect,svg.waterfall .stage-proxydhcp rect{fill:#6fa8dc}svg.waterfall .stage-tftp rect{fill:#93c47d}
        svg.waterfall .stage-http rect{fill:#f6b26b}svg.waterfall .stage-agent rect{fill:#8e7cc3}
        """

    static let js = """
        "use strict";
        document.addEventListener("DOMContentLoaded", () => {
          for (const form of document.querySelectorAll("form[data-confirm]")) {
            form.addEventListener("submit", (e) => { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); });
          }
          const fleet = document.querySelector("[data-live=fleet]");
          if (fleet) {
            const recount = () => {
              const counts = {};
              for (const c of fleet.querySelectorAll(".cell")) {
                const s = [...c.classList].find((k) => k.startsWith("s-"));
                if (s) counts[s.slice(2)] = (counts[s.slice(2)] || 0) + 1;
              }
              for (const el of document.querySelectorAll("#counts .count")) {
                const b = el.querySelector("b");
                if (b) b.textContent = String(counts[el.dataset.state] || 0);
              }
            };
            const events = new EventSource("/events");
            events.addEventListener("refused", () => events.close());
            events.onmessage = (m) => {
              const e = JSON.parse(m.data);
              const cell = document.getElementById("m-" + e.machine);
              if (!cell) return;
              cell.className = "cell s-" + e.state;
              cell.title = e.machine + ": " + e.state + (e.phase ? "/" + e.phase : "");
              cell.dataset.state = e.state;
              recount();
            };
          }
          const facts = document.querySelector("[data-live=machine]");
          if (facts) {
            const table = document.getElementById("events");
            const state = document.getElementById("fact-state");
            const progress = document.getElementById("progress");
            // The stored events replay into the table; only those after what the page was
            // drawn from change its state and progress (else an old one would show for a while).
            const after = Number(facts.dataset.after || 0);
            const size = (n) => n >= 1048576 ? (n / 1048576).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
            const events = new EventSource("/events?machine=" + encodeURIComponent(facts.dataset.machine));
            events.addEventListener("refused", () => events.close());
            events.onmessage = (m) => {
              const e = JSON.parse(m.data);
              const row = table.insertRow(1);
              row.id = "event-" + e.id;
              for (const text of [e.time, e.state + (e.phase ? "/" + e.phase : ""), e.kind, e.message]) {
                row.insertCell().textContent = text;
              }
              if (e.id <= after) return;
              if (state) state.textContent = e.state + (e.phase ? " / " + e.phase : "");
              if (e.kind === "progress" && progress) {
                progress.textContent = e.stage + (e.bytesTotal ? " " + size(e.bytesDone) + " / " + size(e.bytesTotal) +
                  " (" + Math.floor(e.bytesDone * 100 / e.bytesTotal) + "%)" : "");
              } else if (e.kind === "transition" && progress) {
                progress.textContent = "-";
              }
            };
          }
        });
        """
}
