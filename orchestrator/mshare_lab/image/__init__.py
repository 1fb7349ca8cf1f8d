"""Root filesystems the guests boot: the micro initramfs and the Debian disk image."""
