"""``smartbin servo``: field checks and calibration of the tray servo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from edge.config import ServoConfig, add_config_option, load_config, set_keys
from edge.errors import SmartbinError
from edge.servo.link import ActuatorFault
from edge.servo.protocols import PROTOCOLS, open_controller
from edge.servo.supervisor import Actuator, Calibration

HELP = """\
examples:
  smartbin servo ping --config /etc/smartbin/smartbin.yaml
  smartbin servo move --bin kitchen          tip into one bin and come back
  smartbin servo cycle                       visit every bin once (after installation)
  smartbin servo calibrate --bin kitchen --config /etc/smartbin/smartbin.yaml

calibrate moves the servo to the bin's pulse width and reads commands:
  + / -      step by --step µs (default 10)      ++ / --   five steps
  1350       go to 1350 µs                       h         go home and back
  s          save to the config file and quit    q         quit without saving
It writes servo.bins.<bin> into the file and keeps its comments and other keys.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "servo",
        help="check and calibrate the tray servo",
        description="Talk to the servo controller named in the config (servo.*).",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("ping", "move", "cycle", "calibrate"))
    add_config_option(p)
    p.add_argument("--port", help="serial port (overrides servo.port)")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), help="overrides servo.protocol")
    p.add_argument("--bin", help="bin id, for move and calibrate")
    p.add_argument("--step", type=float, default=10.0, help="calibrate: µs per step (default 10)")


def servo_config(args: argparse.Namespace) -> ServoConfig:
    cfg = load_config(args.config).servo
    if args.port:
        cfg.port = args.port
    if args.protocol:
        cfg.protocol = args.protocol
    return cfg


def run(args: argparse.Namespace, ask: Callable[[str], str] = input) -> int:
    cfg = servo_config(args)
    cal = Calibration.from_config(cfg)
    if args.action in ("move", "calibrate") and not args.bin:
        raise SmartbinError(f"servo {args.action} needs --bin", f"one of: {', '.join(cal.bins)}")
    if args.action == "calibrate" and not args.config:
        raise SmartbinError(
            "servo calibrate needs --config FILE", "the pulse widths are saved into that file"
        )
    controller = open_controller(cfg)
    actuator = Actuator(controller, cal)
    try:
        print(f"controller: {controller.ping()} on {cfg.port}")
        if args.action == "move":
            actuator.sort(args.bin)
            print(f"moved to {args.bin} ({cal.target(args.bin):g} µs) and back home ({cal.home_us:g} µs)")
        elif args.action == "cycle":
            failed = 0
            for bin_id in cal.bins:
                try:
                    actuator.sort(bin_id)
                    print(f"ok    {bin_id:<12} {cal.bins[bin_id]:g} µs")
                except ActuatorFault as fault:
                    failed += 1
                    print(f"FAIL  {bin_id:<12} {fault.reason}")
            return 1 if failed else 0
        elif args.action == "calibrate":
            return calibrate(actuator, args, ask)
    except ActuatorFault as fault:
        raise SmartbinError(
            f"servo fault: {fault.reason}", "check the wiring and the controller's power"
        ) from None
    finally:
        controller.close()
    return 0


def calibrate(actuator: Actuator, args: argparse.Namespace, ask: Callable[[str], str]) -> int:
    cal, bin_id = actuator.cal, args.bin
    pulse = last = cal.bins.get(bin_id, cal.home_us)
    steps = {"+": args.step, "-": -args.step, "++": 5 * args.step, "--": -5 * args.step}
    while True:
        if not cal.min_us <= pulse <= cal.max_us:
            print(
                f"  {pulse:g} µs is outside the limits {cal.min_us:g}–{cal.max_us:g} µs; staying at {last:g}"
            )
            pulse = last
        actuator.controller.move(cal.channel, pulse, cal.move_timeout_s)
        last = pulse
        try:
            answer = ask(f"{bin_id} at {pulse:g} µs [+ - ++ -- number h s q]: ").strip()
        except EOFError:
            answer = "q"
        if answer in steps:
            pulse += steps[answer]
        elif answer == "h":
            actuator.home()
        elif answer == "s":
            actuator.home()
            save_bin(Path(args.config), bin_id, pulse)
            print(f"saved servo.bins.{bin_id} = {pulse:g} in {args.config}")
            return 0
        elif answer == "q":
            actuator.home()
            print("quit without saving")
            return 0
        else:
            try:
                pulse = float(answer)
            except ValueError:
                print(f"  unknown command {answer!r}")


def save_bin(path: Path, bin_id: str, pulse: float) -> None:
    """Write one bin's pulse width, keeping the file's comments, order and other keys."""
    if not path.name or not path.exists():
        raise SmartbinError(
            f"config file {path} does not exist", "calibrate needs --config FILE to save into"
        )
    set_keys(path, {f"servo.bins.{bin_id}": int(pulse) if float(pulse).is_integer() else pulse})
