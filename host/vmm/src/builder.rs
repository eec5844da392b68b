//! Builds a VM from a [`crate::vmm`] configuration (stub).
