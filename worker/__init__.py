"""vpc-members: load backend servers into API-gateway VPC channels, and account for every row."""

__version__ = "0.1.0"
