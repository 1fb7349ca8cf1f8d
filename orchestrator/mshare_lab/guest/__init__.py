"""Guests: the domain model, libvirt driver, KVM probe, console capture and garbage collection."""
