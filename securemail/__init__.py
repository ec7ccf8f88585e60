"""securemail: end-to-end encrypted execution requests between GP practices and nursing teams."""

__version__ = "0.1.0"
