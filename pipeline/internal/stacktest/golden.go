package stacktest

import (
	"flag"
	"os"
	"testing"
)

var Update = flag.Bool("update", false, "rewrite golden files")

func Golden(t *testing.T, path, got string) {
	t.Helper()
	if *Update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s is out of date (go test ./pipeline -run %s -update); got:\n%s", path, t.Name(), got)
	}
}
