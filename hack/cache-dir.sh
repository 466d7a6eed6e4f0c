#!/usr/bin/env bash
# Print the user cache folder where chainop keeps built binaries (shared by every clone).
echo "${CHAINOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainop}"
