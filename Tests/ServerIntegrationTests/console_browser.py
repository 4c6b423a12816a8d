#!/usr/bin/python3
"""Drives Farrier's web console in headless Chromium (Debian's chromium, chromium-driver and
python3-selenium), as ConsoleTests.browser asks: log in, see both machines, watch a deploy's
progress arrive live, open the timeline, act behind a confirm, and as a member neither see nor
act on another project's machine, in the page or by a crafted request.

argv: BASE_URL ADMIN_TOKEN MEMBER_TOKEN DIR. Hand-offs with the test are files in DIR: this
script writes `fleet-seen`, `watching` (the machine page is open) and `seen-progress`; the test
writes `deploying`. Screenshots go to DIR/*.png. Exits 0 when every check held, else prints why and 1.
Every wait is bounded.

With `--lab BASE_URL ADMIN_TOKEN OWN_TOKEN OTHER_TOKEN DIR MACHINE OTHER_MACHINE` (LabDeployTests,
against `farrier lab`'s console, while the real agent deploys MACHINE into OWN_TOKEN's project):
log in, see both lab VMs, open MACHINE's page while it is ready and write `watching`; then, on
that same page (never reloaded), watch the deploy's write progress advance and the state reach
deployed; open the boot waterfall; then as OWN_TOKEN's member see MACHINE alone and be refused
OTHER_MACHINE, and as OTHER_TOKEN's member (another project) see nothing and be refused MACHINE,
in the page and by a crafted power-off. Screenshots: DIR/console-lab-{progress,machine,fleet}.png."""
import os
import re
import signal
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

lab = len(sys.argv) > 1 and sys.argv[1] == "--lab"
if lab:
    base, admin_token, own_token, other_token, out, lab_machine, other_machine = sys.argv[2:9]
    member_token = None
else:
    base, admin_token, member_token, out = sys.argv[1:5]
# (`lab status` gives the console's URL with its trailing slash.)
base = base.rstrip("/")


def fail(why):
    print("FAIL: " + why, flush=True)
    sys.exit(1)


def wait_file(name, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(out, name)):
            return
        time.sleep(0.1)
    fail("the test did not write " + name)


def touch(name):
    with open(os.path.join(out, name), "w") as f:
        f.write("1")


def text_of(driver, element_id):
    return driver.find_element(By.ID, element_id).text


# A test that gives up sends SIGTERM: quit the browser (the `finally` below) rather than leave it.
# A process started from a test thread may inherit that thread's blocked signals: unblock it.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]:
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)
# Every text the state fact shows, from the moment a page loads (before its own script runs).
driver.execute_cdp_cmd(
    "Page.addScriptToEvaluateOnNewDocument",
    {
        "source": """window.farrierStates = [];
        document.addEventListener('DOMContentLoaded', () => {
          const s = document.getElementById('fact-state');
          if (!s) return;
          window.farrierStates.push(s.textContent);
          new MutationObserver(() => window.farrierStates.push(s.textContent)).observe(s, {childList: true, characterData: true, subtree: true});
        });"""
    },
)
try:
    wait = WebDriverWait(driver, 30)

    def login(token):
        driver.delete_all_cookies()
        driver.get(base + "/login")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        wait.until(lambda d: d.current_url.rstrip("/") == base)

    def crafted_power_off(csrf, machine):
        """A member's own session and CSRF token, aimed at a machine the page never offered."""
        return driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch('/machines/' + encodeURIComponent(arguments[1]) + '/actions', {method: 'POST',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: 'csrf=' + encodeURIComponent(arguments[0]) + '&action=power-off'}).then(r => done(r.status), e => done(String(e)));""",
            csrf,
            machine,
        )

    def reopen(machine, state, events):
        """Opens a machine's page again once `events` are stored: while they replay into its table,
        the state fact shows `state`, as drawn, and never an older one."""
        driver.get(base + "/machines/" + machine)
        try:
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tr[id^=event-]")) >= events)
        except TimeoutException:
            fail("%s's page replayed %d of %d events" % (machine, len(driver.find_elements(By.CSS_SELECTOR, "#events tr[id^=event-]")), events))
        shown = driver.execute_script("return window.farrierStates")
        if not shown or any(not s.startswith(state) for s in shown):
            fail("%s's page, opened again, showed %r (its events replaying), not %r" % (machine, shown, state))

    def fleet():
        return {c.get_attribute("data-machine"): c.get_attribute("class") for c in driver.find_elements(By.CSS_SELECTOR, ".cell")}

    if lab:
        login(admin_token)
        cells = fleet()
        if set(cells) != {"lab-1", "lab-2"}:
            fail("the lab's fleet shows %r, not lab-1 and lab-2" % sorted(cells))
        if "s-ready" not in cells[lab_machine]:
            fail("%s should show ready before its deploy: %r" % (lab_machine, cells))

        # The deploy, live: the page is open before the deploy starts and is never reloaded (the
        # marker set on it would not survive a reload); what it shows arrives over SSE.
        driver.get(base + "/machines/" + lab_machine)
        if not text_of(driver, "fact-state").startswith("ready"):
            fail("%s's page shows %r before its deploy" % (lab_machine, text_of(driver, "fact-state")))
        driver.execute_script("window.farrierSamePage = true")
        touch("watching")
        seen, states, shot = [], [], False
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            state, progress = text_of(driver, "fact-state"), text_of(driver, "progress")
            if not states or states[-1] != state:
                states.append(state)
            if re.match(r"write .* MiB / .* MiB \(\d+%\)$", progress) and (not seen or seen[-1] != progress):
                seen.append(progress)
                if not shot:
                    driver.save_screenshot(os.path.join(out, "console-lab-progress.png"))
                    shot = True
            if state.startswith("deployed"):
                break
            if state.startswith("failed"):
                fail("%s's deploy failed; states %r, progress %r" % (lab_machine, states, seen[-5:]))
            time.sleep(0.25)
        else:
            fail("%s never showed deployed; states %r, progress %r" % (lab_machine, states, seen[-5:]))
        if not driver.execute_script("return window.farrierSamePage === true"):
            fail("the machine's page was reloaded: the progress did not arrive live")
        if len(seen) < 2:
            fail("the write progress did not advance live: %r (states %r)" % (seen, states))
        if not any(s.startswith("deploying") for s in states):
            fail("the page never showed deploying: %r" % states)
        percents = [int(re.search(r"\((\d+)%\)", s).group(1)) for s in seen]
        if percents != sorted(percents):
            fail("the write progress went backwards: %r" % seen)
        live_events = len(driver.find_elements(By.CSS_SELECTOR, "#events tr[id^=event-]"))
        print("live: %d progress updates (%s .. %s), states %r, %d events" % (len(seen), seen[0], seen[-1], states, live_events), flush=True)

        # The timeline, drawn once the page is opened again.
        reopen(lab_machine, "deployed", live_events)
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg#waterfall g.row')).map(g => g.getAttribute('class') + ' ' + g.querySelector('text').textContent)"
        )
        stages = {r.split(" ")[1] for r in rows}
        # The deploy: the ramdisk's boot (DHCP, HTTP) with the agent's phases to its end. (The
        # lab's machine here has a static address on the boot network: its installed OS asks
        # DHCP for nothing, so the waterfall ends with the agent; LabDeployTests checks that.)
        labels = [r.split(" ", 2)[2] for r in rows]
        if not {"stage-dhcp", "stage-http", "stage-agent"} <= stages or "agent done" not in labels:
            fail("%s's waterfall: %r" % (lab_machine, rows))
        if driver.find_elements(By.CSS_SELECTOR, "#events tr[id^=event-]") == []:
            fail("no events on %s's page" % lab_machine)
        driver.save_screenshot(os.path.join(out, "console-lab-machine.png"))
        driver.get(base + "/")
        if "s-deployed" not in fleet()[lab_machine]:
            fail("the fleet does not show %s deployed: %r" % (lab_machine, fleet()))
        driver.save_screenshot(os.path.join(out, "console-lab-fleet.png"))
        print("waterfall rows: %r" % rows, flush=True)

        def member(token, who, sees):
            """Logs in as a member who sees exactly `sees` and may neither open nor act on the rest."""
            login(token)
            if sorted(fleet()) != sees:
                fail("%s sees %r, not %r" % (who, sorted(fleet()), sees))
            csrf = driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
            for machine in [lab_machine, other_machine]:
                driver.get(base + "/machines/" + machine)
                if bool(driver.find_elements(By.ID, "facts")) != (machine in sees):
                    fail("%s %s %s's page" % (who, "could not open" if machine in sees else "opened", machine))
                if machine not in sees:
                    status = crafted_power_off(csrf, machine)
                    if status != 404:
                        fail("%s's crafted power-off of %s answered %r" % (who, machine, status))

        # A member of the machine's project: that machine alone; the other is not theirs.
        member(own_token, "the member of %s's project" % lab_machine, [lab_machine])
        # A member of another project: nothing, and the deployed machine is not theirs to touch.
        member(other_token, "another project's member", [])
        print("OK", flush=True)
        sys.exit(0)

    # Log in; both machines, by state.
    login(admin_token)
    cells = fleet()
    if set(cells) != {"m1", "m2"}:
        fail("the fleet shows %r, not m1 and m2" % sorted(cells))
    if "s-ready" not in cells["m1"] or "s-ready" not in cells["m2"]:
        fail("both machines should be ready: %r" % cells)
    if driver.get_cookie("farrier_session") is None or not driver.get_cookie("farrier_session").get("httpOnly"):
        fail("no HttpOnly session cookie")
    if driver.execute_script("return document.cookie").find("farrier_session") >= 0:
        fail("the session cookie is readable by scripts")
    touch("fleet-seen")

    # A deploy's progress, live: the page is open before the agent reports.
    wait_file("deploying")
    driver.get(base + "/")
    wait.until(lambda d: "s-deploying" in d.find_element(By.ID, "m-m1").get_attribute("class"))
    driver.save_screenshot(os.path.join(out, "console-fleet.png"))
    driver.get(base + "/machines/m1")
    touch("watching")
    try:
        wait.until(lambda d: "write 2.0 MiB / 3.0 MiB (66%)" in text_of(d, "progress"))
    except TimeoutException:
        fail("the progress never arrived live: %r" % text_of(driver, "progress"))
    touch("seen-progress")
    if driver.find_elements(By.CSS_SELECTOR, "#events tr[id^=event-]") == []:
        fail("no events on the machine's page")
    try:
        wait.until(lambda d: text_of(d, "fact-state").startswith("deployed"))
    except TimeoutException:
        fail("m1 never showed deployed: %r" % text_of(driver, "fact-state"))
    # The timeline: its last boot as a waterfall, with a bar for each stage.
    reopen("m1", "deployed", len(driver.find_elements(By.CSS_SELECTOR, "#events tr[id^=event-]")))
    bars = driver.find_elements(By.CSS_SELECTOR, "svg#waterfall rect")
    if len(bars) < 2:
        fail("the waterfall has %d bars" % len(bars))
    driver.save_screenshot(os.path.join(out, "console-machine.png"))

    # An action behind a confirm: dismissed, nothing; accepted, done.
    driver.get(base + "/machines/m2")
    driver.find_element(By.ID, "do-power-on").click()
    driver.switch_to.alert.dismiss()
    if driver.find_elements(By.ID, "notice"):
        fail("a dismissed confirm still acted")
    driver.find_element(By.ID, "do-power-on").click()
    driver.switch_to.alert.accept()
    wait.until(lambda d: d.find_elements(By.ID, "notice"))
    if "Power on sent." not in text_of(driver, "notice"):
        fail("no notice after the power on")

    # A member: their project's machine only, in the page and by a crafted request.
    login(member_token)
    seen = [c.get_attribute("data-machine") for c in driver.find_elements(By.CSS_SELECTOR, ".cell")]
    if seen != ["m1"]:
        fail("the member sees %r" % seen)
    csrf = driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    driver.get(base + "/machines/m2")
    if "m2" in driver.title and driver.find_elements(By.ID, "facts"):
        fail("the member opened m2's page")
    status = crafted_power_off(csrf, "m2")
    if status != 404:
        fail("a member's crafted power-off of m2 answered %r" % status)
    print("OK", flush=True)
finally:
    driver.quit()
