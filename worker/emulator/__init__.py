"""An emulator of the ROMA Connect / APIG VPC channel members API, for tests and demos.

``async with Emulator(EmulatorConfig(...)) as emu:`` serves it on loopback at ``emu.url``;
``vpc-members emulator`` serves it from the command line.
"""

from worker.emulator.config import ChannelSpec, EmulatorConfig, load_channels
from worker.emulator.server import Emulator

__all__ = ["ChannelSpec", "Emulator", "EmulatorConfig", "load_channels"]
