"""schemathesis hooks for `skiff host` (tests/api-contract/schemathesis.toml).

Some rules of the server are about the daemon's machine, not the request's form, and no
schema can state them: a VM's kernel and disks, and an imported file, must exist and be
what they claim to be; a network must not overlap another. A generated body meets them only
by chance, so nearly every POST would be refused and the stateful phase would never reach
the routes that take a name. So each positive case (a body the schema allows; negative ones
are left as they are) is made to meet them, in every phase:

- POST /vms: each file path that is a non-empty string becomes the image the test put in
  place ($SKIFF_CONTRACT_KERNEL): the kernel, the initrd, each disk's path. A VM made from an
  image or put on a managed network needs an image or network this daemon may not have: the
  body is made a plain VM (its `image` dropped when it names its kernel, NICs naming a network
  left out).
- POST /vms, rules between fields: a `memory.min` above `memory.size` is dropped, and a NIC
  whose tap an earlier NIC of the body already uses is left out.
- POST /images: the path becomes the importable image the test made ($SKIFF_CONTRACT_IMAGE).
- POST /networks: the subnet's host bits are cleared and a reserved first octet becomes 10,
  so it is usable unless another network has it.

Nothing else changes, so a body that was invalid for another reason stays invalid.

An import answers with JSON lines (application/x-ndjson), which schemathesis cannot read by
itself: the deserializer below checks every line (progress lines with whole byte counts,
then exactly one outcome, last) and hands schemathesis the outcome, which it validates
against ImportEvent and follows the links of (the image's name).
"""

import ipaddress
import json
import os
from fractions import Fraction

import schemathesis
from schemathesis.generation import GenerationMode


def _real(value, image):
    return image if isinstance(value, str) and value else value


def _vm(body):
    image = os.environ.get("SKIFF_CONTRACT_KERNEL")
    if not image:
        return body
    body = dict(body)
    if "kernel" in body:
        body.pop("image", None)
    if isinstance(body.get("nics"), list):
        body["nics"] = [
            nic for nic in body["nics"] if not (isinstance(nic, dict) and "network" in nic)
        ]
    for field in ("kernel", "initrd"):
        if field in body:
            body[field] = _real(body[field], image)
    if isinstance(body.get("disks"), list):
        body["disks"] = [
            dict(disk, path=_real(disk.get("path"), image)) if isinstance(disk, dict) else disk
            for disk in body["disks"]
        ]
    return _fields(body)


_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _bytes(size):
    """The bytes of a Size the schema allows (a number of MiB or a string such as "1.5G")."""
    if isinstance(size, int):
        return size << 20
    if not isinstance(size, str):
        return None
    text = size.lower()
    number = text.rstrip("kmgtib")
    unit = text[len(number) :][:1]
    return Fraction(number) * _UNITS.get(unit, 0)


def _fields(body):
    memory = body.get("memory")
    if isinstance(memory, dict) and "min" in memory:
        low, high = _bytes(memory.get("min")), _bytes(memory.get("size"))
        if low is not None and high is not None and low > high:
            body["memory"] = {k: v for k, v in memory.items() if k != "min"}
    if isinstance(body.get("nics"), list):
        taps, nics = set(), []
        for nic in body["nics"]:
            tap = nic.get("tap") if isinstance(nic, dict) else None
            if tap is None or tap not in taps:
                nics.append(nic)
                taps.add(tap)
        body["nics"] = nics
    return body


def _import(body):
    image = os.environ.get("SKIFF_CONTRACT_IMAGE")
    if image and isinstance(body.get("path"), str):
        return dict(body, path=image)
    return body


def _network(body):
    try:
        net = ipaddress.IPv4Network(body.get("subnet"), strict=False)
    except (TypeError, ValueError):
        return body
    first = net.network_address.packed[0]
    address = net.network_address
    if first in (0, 127) or first >= 224 or net.network_address.is_link_local:
        address = ipaddress.IPv4Address(bytes([10]) + net.network_address.packed[1:])
    usable = ipaddress.IPv4Network(f"{address}/{net.prefixlen}", strict=False)
    return dict(body, subnet=str(usable))


MAPPERS = {"/vms": _vm, "/images": _import, "/networks": _network}


@schemathesis.hook
def map_case(context, case):
    meta = getattr(case, "meta", None)
    negative = meta is not None and meta.generation.mode == GenerationMode.NEGATIVE
    mapper = MAPPERS.get(case.operation.path)
    if negative or case.operation.method.upper() != "POST" or mapper is None:
        return case
    if isinstance(case.body, dict):
        case.body = mapper(case.body)
    return case


@schemathesis.deserializer("application/x-ndjson")
def import_lines(ctx, response):
    lines = [json.loads(line) for line in response.content.decode().splitlines() if line]
    if not lines:
        raise ValueError("an import answered no line")
    *progress, outcome = lines
    for line in progress:
        counts = line.get("progress") if isinstance(line, dict) else None
        if (
            set(line) != {"progress"}
            or not isinstance(counts, dict)
            or not all(isinstance(counts.get(k), int) for k in ("done", "total"))
            or not 0 <= counts["done"] <= counts["total"]
        ):
            raise ValueError(f"not a progress line before the outcome: {line!r}")
    if not isinstance(outcome, dict) or not (set(outcome) <= {"image", "error"}):
        raise ValueError(f"the last line is not the import's outcome: {outcome!r}")
    return outcome
