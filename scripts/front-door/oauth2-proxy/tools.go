//go:build tools

// Package tools pins the program this module builds; scripts/build-front-door.sh builds it.
package tools

import (
	_ "github.com/oauth2-proxy/oauth2-proxy/v7"
)
