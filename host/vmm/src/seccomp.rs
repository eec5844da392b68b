//! The seccomp filters the VMM threads run under after setup (stub).
