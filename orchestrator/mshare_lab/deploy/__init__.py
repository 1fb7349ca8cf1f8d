"""Full guests reached over SSH: Ansible through ansible-runner, Fabric for ad-hoc work."""
