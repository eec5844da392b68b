//! KVM state: the VM fd, guest memory, vCPUs (stub).
