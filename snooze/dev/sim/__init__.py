"""Simulated hardware for development and tests.

Each module stands in for a piece of a machine room that the real system talks to, and speaks
the real protocol, so that the code under test cannot tell the difference: `snooze.dev.sim.bmc`
is a baseboard management controller answering IPMI over LAN on loopback, whose chassis power
starts and stops a process; `snooze.dev.sim.libvirtd` runs private libvirt daemons as separate
hypervisor hosts.
"""
