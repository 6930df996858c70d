//go:build tools

// Package tools pins the programs this module builds; scripts/build-control-plane.sh builds them.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
