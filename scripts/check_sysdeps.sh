#!/usr/bin/env bash
# open3d loads libusb-1.0 at import time on Linux. Install it when we can, else say what to install.
# In CI (CI=true, root, apt) also install Debian's chromium + chromium-driver for the web page's
# browser test (tests/test_app.py skips itself where no browser is installed).
set -eu
[ "$(uname -s)" = Linux ] || exit 0
can_apt=false
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then can_apt=true; fi
updated=false
apt_install() {
  if [ "$updated" = false ]; then apt-get update -qq; updated=true; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if [ "${CI:-}" = true ] && [ "$can_apt" = true ]; then
  if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    echo "installing chromium and chromium-driver (browser test of the web page)"
    apt_install chromium chromium-driver
  fi
fi
if ldconfig -p 2>/dev/null | grep -q 'libusb-1\.0\.so'; then exit 0; fi
if [ "$can_apt" = true ]; then
  echo "installing libusb-1.0-0 (needed by open3d)"
  apt_install libusb-1.0-0
  exit 0
fi
echo "error: open3d needs the system library libusb-1.0; install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0) and run make again" >&2
exit 1
