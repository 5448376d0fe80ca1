#!/usr/bin/env python3
"""Writes the seed corpora of the ws_frames and session fuzz targets (run from fuzz/)."""
import os
import struct

MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(opcode, payload, fin=True, rsv=0, masked=True, len_form=None):
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if len_form == 16 or (len_form is None and 126 <= n <= 0xFFFF):
        head = bytes([b0, (0x80 if masked else 0) | 126]) + struct.pack(">H", n)
    elif len_form == 64 or (len_form is None and n > 0xFFFF):
        head = bytes([b0, (0x80 if masked else 0) | 127]) + struct.pack(">Q", n)
    else:
        head = bytes([b0, (0x80 if masked else 0) | n])
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close(code, reason=b""):
    return frame(8, struct.pack(">H", code) + reason)


WS = {
    "text": frame(1, b"hello") + close(1000, b"bye"),
    "binary": frame(2, bytes(range(200))),
    "fragments": frame(1, "wö".encode()[:2], fin=False) + frame(9, b"p")
    + frame(0, "wö".encode()[2:], fin=False) + frame(0, b"rld") + close(1001),
    "len16_short": frame(1, b"a" * 10, len_form=16),
    "len64": frame(2, b"b" * 300, len_form=64),
    "oversize": frame(2, b"c" * 5000),
    "oversize_fragments": frame(2, b"d" * 3000, fin=False) + frame(0, b"e" * 2000),
    "bad_utf8": frame(1, b"\xce\xba\xff"),
    "bad_utf8_fragment": frame(1, b"\xce", fin=False) + frame(0, b"\xff"),
    "rsv": frame(1, b"x", rsv=0x40),
    "unmasked": frame(1, b"x", masked=False),
    "bad_opcode": frame(3, b""),
    "cont_first": frame(0, b"x"),
    "frag_control": frame(9, b"p", fin=False),
    "big_ping": frame(9, b"p" * 126),
    "close_1byte": frame(8, b"\x03"),
    "close_bad_code": close(1005),
    "close_bad_reason": close(1000, b"\xff"),
    "pings": frame(9, b"1") + frame(10, b"2") + frame(9, b""),
    "empty_close": frame(8, b"") + frame(1, b"after close"),
}

SEP = b"\xff"
RAW = b"\xfe"
HS = b'{"event":"#handshake","data":{"authToken":null},"cid":1}'
HS_TOKEN = b'{"event":"#handshake","data":{"authToken":"$TOKEN"},"cid":1}'
SUB = b'{"event":"#subscribe","data":{"channel":"a"},"cid":2}'
PUB = b'{"event":"#publish","data":{"channel":"a","data":"x"},"cid":3}'
SESSION = {
    "handshake": HS,
    "handshake_token": HS_TOKEN + SEP + b'{"event":"echo","data":{"x":1},"cid":2}',
    "subscribe_publish": SEP.join([HS, SUB, PUB, b'{"event":"#unsubscribe","data":"a","cid":4}']),
    "batch": HS + SEP + b"[" + SUB + b"," + PUB + b',{"event":"echo","data":[1,2],"cid":5}]',
    "auth": SEP.join([HS, b'{"event":"#authenticate","data":"$TOKEN","cid":2}',
                      b'{"event":"#removeAuthToken"}', b'{"event":"#authenticate","data":"a.b.c","cid":3}']),
    "pings_v1": SEP.join([HS, b"#2", b"", b'{"rid":99,"data":1}']),
    "raw_frames": SEP.join([HS, RAW + frame(9, b"ping") + frame(1, b"{", fin=False) + frame(0, b'"event":"echo","cid":7}')]),
    "close_reason": SEP.join([HS, RAW + close(4000, b"bye")]),
    "before_handshake": SEP.join([SUB, PUB, b"not json"]),
    "protocol_error": SEP.join([HS, RAW + frame(1, b"x", rsv=0x20)]),
}

for target, seeds in (("ws_frames", WS), ("session", SESSION)):
    d = os.path.join("corpus_seed", target)
    os.makedirs(d, exist_ok=True)
    for i, (name, body) in enumerate(seeds.items()):
        if target == "ws_frames":
            # leftover bytes, three read sizes (0 = unlimited)
            body = bytes([(i * 7) % 40, 0 if i % 3 == 0 else 1 + i, 3, 0]) + body
        with open(os.path.join(d, name), "wb") as f:
            f.write(body)
