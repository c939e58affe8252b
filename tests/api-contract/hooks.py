"""schemathesis hooks for `skiff host` (tests/api-contract/schemathesis.toml).

A generated VM spec names files that do not exist, so every POST /vms would be refused and
the stateful phase would never reach the routes that take a VM's name. Each file path that
is a non-empty string (a schema-valid one) becomes the image the test put in place
($SKIFF_CONTRACT_KERNEL): the kernel, the initrd, each disk's path. Likewise a VM made
from an image or put on a managed network needs an image or network this daemon does not
have: such a body is made a plain VM (its `image` dropped when it names its kernel, NICs
naming a network left out), else nearly every generated body was refused and the run
reached the name-based routes only by luck. Nothing else changes, so a body that was
invalid for another reason stays invalid.
"""

import os

import schemathesis


def _real(value, image):
    return image if isinstance(value, str) and value else value


@schemathesis.hook
def map_body(context, body):
    image = os.environ.get("SKIFF_CONTRACT_KERNEL")
    if context.operation.method.upper() != "POST" or context.operation.path != "/vms":
        return body
    if not image or not isinstance(body, dict):
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
    return body
