// Package crd embeds the generated CustomResourceDefinitions, so that the dev stack and
// the tests install exactly what `make manifests` wrote.
package crd

import "embed"

// Bases holds bases/*.yaml.
//
//go:embed bases/*.yaml
var Bases embed.FS
