"""The lab's hosts: lab file, hosts, placement, remote transport and artifact cache.

A lab is one or more libvirt hosts named in a lab file (``lab_file``); each becomes a
``host.Host`` that gives drivers and capacity, ``placement`` spreads a matrix's scenarios
over them by fit, ``ssh_transport`` opens a remote host through libvirt's own remote
protocol with the lab's key, checked host keys and SSH keepalives, and ``volumes`` keeps
the content-addressed artifact cache and per-run files of a host in a libvirt storage
pool, so that nothing but libvirt (and SSH for a command like ``uname -r``) ever reaches
a remote host.
"""
