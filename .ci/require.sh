# Sourced by the install scripts. `require COMMAND PACKAGES CHECK`: makes sure a tool
# the tests need from the system is there (CHECK, a shell command, defaults to finding
# COMMAND on PATH). As root on Debian it installs the Debian PACKAGES; otherwise it
# stops, naming them, since nothing may be skipped.
require() {
  local command="$1" packages="$2" check="${3:-command -v $1}"
  if eval "$check" >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $packages (for $command)" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y $packages >&2
    eval "$check" >/dev/null 2>&1 && return 0
  fi
  echo "missing: $command; install the Debian packages: $packages (or their equivalent), then run this again" >&2
  exit 1
}
