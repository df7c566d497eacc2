#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/seeds/<target>/) from the protocol docs' examples.

Run from anywhere: `python3 fuzz/make_seeds.py`. The seeds are small and kept in git; the
corpora a campaign grows (fuzz/corpus/) are not. merge_patch has no seeds: its input is read
as a recipe for two JSON values (libfuzzer's `Unstructured`), not as text, so text examples
would mean nothing to it, and libFuzzer finds its way from an empty corpus.
"""
import hashlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
ACON_DOC = (ROOT / "docs" / "protocol" / "acon.md").read_text()
SKABEN_DOC = (ROOT / "docs" / "protocol" / "skaben.md").read_text()
COMMANDS = ["pong", "cup", "sup", "info", "ack", "nack"]  # skaben::Command::ALL order


def write(target, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


# ACon: the example message and the answer from the spec, both line endings, plus the test
# vectors' variants and the UTF-8 cases of the decoder fix. The first byte picks the chunk size.
blocks = [b for b in re.findall(r"```\n(.*?)```", ACON_DOC, re.S) if b.startswith("ACon_")]
message = blocks[0]
frames = list(blocks)
frames.append(message.replace("BOX_ENG=2,5,8,23,24,25", "BOX_ENG=0\nBOX_TO=0\nBOX_ACC=0"))
frames.append(message.replace("STATE=0", "STATE=0,2\nFW=v7"))
frames.append(message.replace("SEND=141349", "SEND=abc"))
frames.append(message + message)
for text in frames:
    for nl in ("\n", "\r\n"):
        write("decoder", bytes([0]) + text.replace("\n", nl).encode())
        write("decoder", bytes([7]) + text.replace("\n", nl).encode())
write("decoder", b"\x00ACon_V1.0\nID=1953\nSEND=1\nFW=v2\xff\xfe\nCLOSE\n")
write("decoder", b"\x00ACon_V1.0\nID=19\xff53\nSEND=1\nCLOSE\n")

# SKABEN: the wire examples, "topic  payload" per line.
wire = re.search(r"## Wire examples.*?```\n(.*?)```", SKABEN_DOC, re.S).group(1)
pairs = []
for line in wire.splitlines():
    topic, _, rest = line.partition(" ")
    payload = rest.strip()
    payload = re.sub(r"\s+\(.*\)$", "", payload).replace("…", "d9766421904225c7f5de0e061004bb78")
    pairs.append((topic, payload))
for topic, payload in pairs:
    write("skaben_topic", topic.encode())
    write("skaben_topic", topic.upper().encode())
    # The packet target: an explicit topic (first byte >= 240, NUL, payload) ...
    write("skaben_packet", b"\xf0" + topic.encode() + b"\x00" + payload.encode())
    # ... and the payload under each command the server reads.
    for i, _ in enumerate(COMMANDS):
        write("skaben_packet", bytes([i]) + payload.encode())
for topic in ["ask/lock/ALL/Pong", "ask/ask/x/pong", "ask//x/pong", "ask/lock/b827eb0a1b2c/ping",
              "lock/all/ping", "ask/" + "t" * 33 + "/x/sup", "ask/lock/" + "9" * 65 + "/sup"]:
    write("skaben_topic", topic.encode())
for cup in re.findall(r"^(?:standard|reference)\s+(\{.*\})$", SKABEN_DOC, re.M):
    write("skaben_packet", bytes([2]) + cup.encode())
    write("skaben_packet", bytes([1]) + cup.encode())
