#!/usr/bin/env bash
# Debian's chromium and chromium-driver, for the agent's card tests in a real browser
# (tests/test_card_browser.py, driven by Selenium by explicit path). Installed with apt when
# missing: never a browser or driver download from outside the package registries.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "the browser tests need /usr/bin/chromium and /usr/bin/chromedriver (Debian's chromium" \
       "and chromium-driver packages); install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing Debian's chromium and chromium-driver for the browser tests" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
