// Package samples embeds the sample CustomerLoops, which `customerloop-dev dev` applies.
package samples

import _ "embed"

// CustomerLoop is the sample loop with a usage stream and a plan stream.
//
//go:embed loops_v1alpha1_customerloop.yaml
var CustomerLoop []byte
