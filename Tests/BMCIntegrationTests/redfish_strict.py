"""A strict Redfish service for the parts sushy-emulator lacks: SessionService with logout,
ETag/If-Match (428 without it, 412 when stale) and 202 task monitors. Hand-written for
Farrier's tests; sushy-emulator remains the peer for everything it implements.

Usage: redfish_strict.py PORT USER PASSWORD STATEFILE
STATEFILE receives a JSON line per event (login, logout, patch, reset) for the test to read."""
import json, sys, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, user, password, events = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sessions = {}
system = {"@odata.id": "/redfish/v1/Systems/System.Embedded.1", "Id": "System.Embedded.1",
          "Manufacturer": "Farrier Test", "Model": "Strict", "BiosVersion": "1.0", "UUID": str(uuid.uuid4()),
          "PowerState": "Off",
          "Boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled",
                   "BootSourceOverrideMode": "UEFI",
                   "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd"]},
          "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/System.Embedded.1/Actions/ComputerSystem.Reset",
                                                "@Redfish.ActionInfo": "/redfish/v1/Systems/System.Embedded.1/ResetActionInfo"}}}
etag = [1]
tasks = {}
# The first PATCH finds that "someone else" changed the system since the client read it.
concurrent_writer = [True]

def log(**kw):
    with open(events, "a") as f:
        f.write(json.dumps(kw) + "\n")

class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass

    def reply(self, code, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def authed(self):
        if self.headers.get("X-Auth-Token") in sessions:
            return True
        self.reply(401, {"error": {"code": "Base.1.0.NoValidSession", "message": "no valid session"}})
        return False

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        p = self.path.rstrip("/")
        if p == "/redfish/v1":
            return self.reply(200, {"@odata.id": "/redfish/v1/", "Systems": {"@odata.id": "/redfish/v1/Systems"},
                                    "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                                    "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}})
        if not self.authed():
            return
        if p == "/redfish/v1/Systems":
            return self.reply(200, {"Members": [{"@odata.id": system["@odata.id"]}], "Members@odata.count": 1})
        if p == system["@odata.id"]:
            return self.reply(200, system, [("ETag", 'W/"%d"' % etag[0])])
        if p == system["@odata.id"] + "/ResetActionInfo":
            return self.reply(200, {"Parameters": [{"Name": "ResetType", "AllowableValues": ["On", "ForceOff", "ForceRestart", "GracefulShutdown"]}]})
        if p.startswith("/redfish/v1/TaskService/Tasks/"):
            t = tasks[p]
            t["polls"] += 1
            if t["polls"] < 2:
                return self.reply(202, {"TaskState": "Running"})
            system["PowerState"] = t["result"]
            return self.reply(200, {"TaskState": "Completed", "TaskStatus": "OK"})
        self.reply(404, {"error": {"code": "Base.1.0.ResourceMissingAtURI", "message": p}})

    def do_POST(self):
        p = self.path.rstrip("/")
        if p == "/redfish/v1/SessionService/Sessions":
            b = self.body()
            if b.get("UserName") != user or b.get("Password") != password:
                log(event="login-refused")
                return self.reply(401, {"error": {"code": "Base.1.0.InsufficientPrivilege", "message": "bad credentials"}})
            token, sid = uuid.uuid4().hex, uuid.uuid4().hex[:8]
            sessions[token] = sid
            log(event="login", session=sid)
            loc = "/redfish/v1/SessionService/Sessions/" + sid
            return self.reply(201, {"@odata.id": loc}, [("X-Auth-Token", token), ("Location", loc)])
        if not self.authed():
            return
        if p == system["Actions"]["#ComputerSystem.Reset"]["target"]:
            rt = self.body().get("ResetType")
            if rt not in ("On", "ForceOff", "ForceRestart", "GracefulShutdown"):
                return self.reply(400, {"error": {"code": "Base.1.0.ActionParameterNotSupported", "message": "ResetType %s" % rt}})
            log(event="reset", type=rt)
            loc = "/redfish/v1/TaskService/Tasks/%d" % (len(tasks) + 1)
            tasks[loc] = {"polls": 0, "result": "Off" if rt in ("ForceOff", "GracefulShutdown") else "On"}
            return self.reply(202, None, [("Location", loc), ("Retry-After", "1")])
        self.reply(404, {})

    def do_PATCH(self):
        if not self.authed():
            return
        if self.path.rstrip("/") != system["@odata.id"]:
            return self.reply(404, {})
        match = self.headers.get("If-Match")
        if match is None:
            log(event="patch-428")
            return self.reply(428, {"error": {"code": "Base.1.0.PreconditionRequired", "message": "If-Match required"}})
        if concurrent_writer[0]:
            concurrent_writer[0] = False
            etag[0] += 1
        if match != 'W/"%d"' % etag[0]:
            log(event="patch-412")
            return self.reply(412, {"error": {"code": "Base.1.0.PreconditionFailed", "message": "stale ETag"}})
        boot = self.body().get("Boot", {})
        system["Boot"].update({k: v for k, v in boot.items() if k.startswith("BootSourceOverride")})
        etag[0] += 1
        log(event="patch", boot=boot)
        self.reply(204)

    def do_DELETE(self):
        p = self.path.rstrip("/")
        sid = p.rsplit("/", 1)[-1]
        token = self.headers.get("X-Auth-Token")
        if sessions.get(token) == sid:
            del sessions[token]
            log(event="logout", session=sid)
            return self.reply(204)
        self.reply(401, {})

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
