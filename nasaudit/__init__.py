"""nasaudit: search neural architectures and audit them for security."""

__version__ = "0.1.0"
