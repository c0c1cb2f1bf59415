"""An EC2-compatible API for Snooze (the original's snoozeec2): ``gateway`` serves the EC2 query
protocol in front of the bootstrap, ``sigv4`` checks AWS Signature Version 4."""

from bootstrap.ec2.gateway import Ec2Error, Ec2Gateway, Ec2Options
from bootstrap.ec2.sigv4 import SignatureError, verify

__all__ = ["Ec2Error", "Ec2Gateway", "Ec2Options", "SignatureError", "verify"]
