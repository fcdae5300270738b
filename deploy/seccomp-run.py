#!/usr/bin/python3
"""Runs a command under a Docker-format seccomp profile, without Docker.

    deploy/seccomp-run.py deploy/seccomp-stage.json -- target/release/stage -c conf/stage.json

Loads the profile's rules into the kernel with libseccomp (Debian: python3-seccomp) the way
Docker's runtime applies `--security-opt seccomp=FILE` — the default action, and each syscall
group's action — then executes the command, which inherits the filter. It is how this project
checks its profile on machines with no Docker engine (stage/tests/e2e/deploy.rs); it
understands the subset of the format that profile uses (no argument conditions) and refuses
anything else rather than guessing.
"""
import json
import os
import sys

import seccomp


def action(name, errno_ret):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno_ret)
    if name == "SCMP_ACT_KILL_PROCESS":
        return seccomp.KILL_PROCESS
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    sys.exit(f"seccomp-run: action {name} is not supported by this loader")


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: seccomp-run.py PROFILE.json -- COMMAND [ARGS...]")
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    default_errno = profile.get("defaultErrnoRet", 1)
    rules = seccomp.SyscallFilter(defaction=action(profile["defaultAction"], default_errno))
    for group in profile.get("syscalls", []):
        if group.get("args"):
            sys.exit("seccomp-run: argument conditions are not supported by this loader")
        act = action(group["action"], group.get("errnoRet", default_errno))
        for name in group["names"]:
            try:
                rules.add_rule(act, name)
            except (RuntimeError, ValueError):
                # A name this architecture does not have (open, stat... on arm64): as Docker
                # does, it is left out.
                pass
    rules.load()
    os.execvp(sys.argv[3], sys.argv[3:])


if __name__ == "__main__":
    main()
