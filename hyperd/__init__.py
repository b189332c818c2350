"""hyperd: the daemon that runs pods in micro-VMs."""

__version__ = "0.1.0"
