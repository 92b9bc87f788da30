#!/usr/bin/env bash
# open3d loads libusb-1.0 at import time on Linux. Install it when we can, else say what to install.
set -eu
[ "$(uname -s)" = Linux ] || exit 0
if ldconfig -p 2>/dev/null | grep -q 'libusb-1\.0\.so'; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing libusb-1.0-0 (needed by open3d)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
  exit 0
fi
echo "error: open3d needs the system library libusb-1.0; install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0) and run make again" >&2
exit 1
