"""mshare-lab: a lab to prove, break and measure page-table sharing across processes."""

__version__ = "0.1.0"
