"""stompede against stomp.py (PyPI), a second real third-party STOMP client,
over its WebSocket transport (stomp.adapter.ws.WSStompConnection).

Each test starts the stompede binary on a free loopback port (STOMPEDE_BIN,
or target/debug/stompede) and stops it with SIGTERM, checking it exits 0.
"""

import json
import os
import queue
import re
import signal
import subprocess
import threading
import unittest
import urllib.request
from pathlib import Path

import stomp
from stomp.adapter.ws import WSStompConnection

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10  # seconds any single expected event may take


def broker_binary():
    if os.environ.get("STOMPEDE_BIN"):
        return os.environ["STOMPEDE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or ROOT / "target"
    return str(Path(target) / "debug" / "stompede")


class Broker:
    """A stompede process on 127.0.0.1:0; `address` is what it printed."""

    def __init__(self, *flags):
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.process = subprocess.Popen(
            [broker_binary(), "--listen", "127.0.0.1:0", *flags],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        found = threading.Event()
        lines = []

        def read_banner():
            for line in self.process.stdout:
                lines.append(line)
                match = re.search(r"ws://([0-9.]+):(\d+)/", line)
                if match:
                    self.host, self.port = match.group(1), int(match.group(2))
                    found.set()
            found.set()

        threading.Thread(target=read_banner, daemon=True).start()
        if not found.wait(WAIT) or not hasattr(self, "port"):
            self.process.kill()
            raise RuntimeError(f"stompede did not start: {''.join(lines)}")

    def publish(self, destination, body, headers=None):
        request = urllib.request.Request(
            f"http://{self.host}:{self.port}/api/v1/publish",
            data=json.dumps({"destination": destination, "body": body, "headers": headers or {}}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            assert response.status == 202, response.status
            return json.loads(response.read())

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(WAIT)
        self.process.stdout.close()
        return code


class Events(stomp.ConnectionListener):
    """Every frame stomp.py hands us, in arrival order, on one queue."""

    def __init__(self):
        self.events = queue.Queue()
        self.connected = None

    def on_connected(self, frame):
        self.connected = frame

    def on_message(self, frame):
        self.events.put(("MESSAGE", frame))

    def on_receipt(self, frame):
        self.events.put(("RECEIPT", frame))

    def on_error(self, frame):
        self.events.put(("ERROR", frame))

    def on_disconnected(self):
        self.events.put(("DISCONNECTED", None))

    def next(self, kind):
        """The next event, which must be of `kind`."""
        got, frame = self.events.get(timeout=WAIT)
        if got != kind:
            detail = frame.headers if frame is not None else ""
            raise AssertionError(f"expected {kind}, got {got} {detail}")
        return frame


def connect(broker):
    connection = WSStompConnection([(broker.host, broker.port)], ws_path="/ws", timeout=WAIT)
    events = Events()
    connection.set_listener("events", events)
    connection.connect(wait=True)
    return connection, events


class StompPyTest(unittest.TestCase):
    def setUp(self):
        self.broker = Broker("--client-send", "allow")

    def tearDown(self):
        self.assertEqual(self.broker.stop(), 0, "stompede exits 0 on SIGTERM")

    def test_subscribe_receive_send_unsubscribe_disconnect(self):
        connection, events = connect(self.broker)
        self.assertEqual(events.connected.headers["version"], "1.2")

        connection.subscribe("/topic/comments.7", id="page", ack="auto", headers={"receipt": "sub-1"})
        self.assertEqual(events.next("RECEIPT").headers["receipt-id"], "sub-1")

        # A comment from the comment API, with a JSON body and a header of its own.
        answer = self.broker.publish("/topic/comments.7", {"author": "Zoë", "text": "Grüße, 世界"}, {"x-article": "7"})
        self.assertEqual(answer["subscribers"], 1)
        message = events.next("MESSAGE")
        self.assertEqual(message.headers["destination"], "/topic/comments.7")
        self.assertEqual(message.headers["subscription"], "page")
        self.assertEqual(message.headers["message-id"], answer["message_id"])
        self.assertEqual(message.headers["content-type"], "application/json")
        self.assertEqual(message.headers["x-article"], "7")
        self.assertEqual(json.loads(message.body), {"author": "Zoë", "text": "Grüße, 世界"})

        # A SEND from stomp.py itself goes through the same fan-out.
        connection.send("/topic/comments.7", "sent by stomp.py", content_type="text/plain", headers={"receipt": "send-1"})
        sent = events.next("MESSAGE")
        self.assertEqual(sent.body, "sent by stomp.py")
        self.assertEqual(sent.headers["subscription"], "page")
        self.assertEqual(events.next("RECEIPT").headers["receipt-id"], "send-1")

        connection.unsubscribe(id="page", headers={"receipt": "unsub-1"})
        self.assertEqual(events.next("RECEIPT").headers["receipt-id"], "unsub-1")
        self.assertEqual(self.broker.publish("/topic/comments.7", "nobody reads this")["subscribers"], 0)

        # stomp.py closes its socket when the DISCONNECT's receipt arrives,
        # and tells its listeners in that order.
        connection.disconnect(receipt="bye")
        events.next("DISCONNECTED")
        self.assertEqual(events.next("RECEIPT").headers["receipt-id"], "bye")

    def test_a_refused_subscribe_is_an_error_frame_then_a_close(self):
        connection, events = connect(self.broker)
        connection.subscribe("/queue/private", id="nope", headers={"receipt": "r"})
        error = events.next("ERROR")
        self.assertIn('not allowed to subscribe to "/queue/private"', error.headers["message"])
        self.assertEqual(error.headers.get("receipt-id"), "r")
        events.next("DISCONNECTED")
        self.assertFalse(connection.is_connected())


if __name__ == "__main__":
    unittest.main()
