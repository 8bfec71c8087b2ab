package chart

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLint proves the chart passes helm lint --strict (templates render, YAML is valid,
// values meet values.schema.json) for each value set, and that the schema is enforced.
func TestLint(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir}
			for _, f := range vs.files {
				args = append(args, "--values", f)
			}
			command(t, helmBin, args...)
		})
	}
	t.Run("schema refuses an unknown runner", func(t *testing.T) {
		out, err := tryCommand(t, helmBin, "lint", "--strict", chartDir, "--set", "manager.runner=sidecar")
		if err == nil {
			t.Fatalf("lint accepted manager.runner=sidecar:\n%s", out)
		}
		if !strings.Contains(err.Error(), "/manager/runner") {
			t.Fatalf("lint failed, but not on manager.runner: %v", err)
		}
	})
}

// TestTemplateGolden pins what the chart renders for each value set; a change shows up
// as a diff of testdata/<name>.yaml in review. -update rewrites the files.
func TestTemplateGolden(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			got := helmTemplate(t, vs.files)
			golden := filepath.Join("testdata", vs.name+".yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./test/chart -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("helm template differs from %s (go test ./test/chart -update rewrites it):\n%s",
					golden, lineDiff(string(want), string(got)))
			}
		})
	}
}

// lineDiff lists the lines of want missing from got (-) and those added (+), in order,
// with the common prefix and suffix left out: enough to see what a template change did.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	p := 0
	for p < len(w) && p < len(g) && w[p] == g[p] {
		p++
	}
	s := 0
	for s < len(w)-p && s < len(g)-p && w[len(w)-1-s] == g[len(g)-1-s] {
		s++
	}
	var b strings.Builder
	for _, l := range w[p : len(w)-s] {
		b.WriteString("- " + l + "\n")
	}
	for _, l := range g[p : len(g)-s] {
		b.WriteString("+ " + l + "\n")
	}
	return b.String()
}
