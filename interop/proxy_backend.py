# The README's application backend for `socketcluster serve --proxy-*` (Python 3, stdlib).
import hashlib, hmac, json, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("PROXY_SECRET", "change-me").encode()
user = lambda m: (m["socket"]["authToken"] or {}).get("username")

def rpc(m):
    if m["procedure"] == "login":
        if (m["data"] or {}).get("password") != "secret":
            return {"error": {"name": "LoginError", "message": "Wrong password", "field": "password"}}
        return {"setAuthToken": {"claims": {"username": m["data"]["username"]}}, "data": "welcome"}
    return {"data": user(m)}  # whoami

def subscribe(m):
    if m["channel"].startswith("private/") and m["channel"] != f"private/{user(m)}":
        return {"error": {"name": "ForbiddenError", "message": "Not your channel"}}
    return {"allow": True, "ttl": 60}

def publish(m):
    return {"data": {**m["data"], "from": user(m) or "guest"}}

class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ts = self.headers.get("X-SocketCluster-Timestamp", "0")
        mac = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(mac, self.headers.get("X-SocketCluster-Signature", ""))
        m = json.loads(body) if ok and abs(time.time() * 1000 - int(ts)) < 60000 else {}
        handler = {"rpc": rpc, "subscribe": subscribe, "publish": publish}.get(m.get("hook"))
        out = json.dumps(handler(m) if handler else {}).encode()
        self.send_response(200 if m else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "3000"))), Hook)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
