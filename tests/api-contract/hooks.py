"""schemathesis hooks for `skiff host` (tests/api-contract/schemathesis.toml).

A generated VM spec names a kernel that does not exist, so every POST /vms would be refused
and the stateful phase would never reach the routes that take a VM's name. Where the
generated kernel is a non-empty string (a schema-valid one), it becomes the image the test
put in the daemon's image directory ($SKIFF_CONTRACT_KERNEL), and host files and devices
that cannot exist here (initrd, disks, taps, vsock) are dropped. Nothing else changes: a
body that was invalid for another reason stays invalid.
"""

import os

import schemathesis


@schemathesis.hook
def map_body(context, body):
    if context.operation.method.upper() != "POST" or context.operation.path != "/vms":
        return body
    kernel = os.environ.get("SKIFF_CONTRACT_KERNEL")
    if kernel and isinstance(body, dict) and isinstance(body.get("kernel"), str) and body["kernel"]:
        body = dict(body)
        body["kernel"] = kernel
        for field in ("initrd", "disks", "nics", "vsock"):
            body.pop(field, None)
    return body
