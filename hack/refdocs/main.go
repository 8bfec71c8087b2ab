// Command refdocs writes the CustomerLoop API reference (docs/reference.md) from the Go
// API types: field names from json tags, types, doc comments, and what the kubebuilder
// markers say (required or optional, defaults, enums, bounds, CEL rules). It reads the
// source with go/parser rather than importing the package, so that it needs no module
// of its own and follows whatever types exist.
//
//	go run ./hack/refdocs -api api/v1alpha1 -out docs/reference.md
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	dir := flag.String("api", "api/v1alpha1", "directory of the API package")
	out := flag.String("out", "docs/reference.md", "file to write; - for stdout")
	root := flag.String("root", "CustomerLoop", "the resource's Go type")
	flag.Parse()
	pkg, err := load(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "refdocs: %v\n", err)
		os.Exit(1)
	}
	doc, err := render(pkg, *root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "refdocs: %v\n", err)
		os.Exit(1)
	}
	if *out == "-" {
		_, err = os.Stdout.Write(doc)
	} else {
		err = os.WriteFile(*out, doc, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "refdocs: %v\n", err)
		os.Exit(1)
	}
}
