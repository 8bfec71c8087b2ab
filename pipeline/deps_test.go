package pipeline

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPipelineImportsNothingOfKubernetes holds the direction of the project's imports:
// the pipeline (every package under pipeline/) runs in a worker pod, inside the manager
// or from a file, and so imports no Kubernetes package and nothing of the API types, the
// controllers or the commands.
func TestPipelineImportsNothingOfKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-test", "customerloop.dev/customerloop/pipeline/...").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "customerloop.dev/customerloop/pipeline/dashboard") || !slices.Contains(deps, "github.com/segmentio/kafka-go") {
		t.Fatalf("go list -deps listed %d packages without the pipeline's own: the check reads nothing", len(deps))
	}
	var bad []string
	for _, d := range deps {
		// The tests may use the shared test helpers, which import nothing of Kubernetes
		// either (checked here too, since -test lists them).
		if forbiddenInPipeline(d) {
			bad = append(bad, d)
		}
	}
	if len(bad) > 0 {
		t.Errorf("the pipeline depends on %v", bad)
	}
	if !forbiddenInPipeline("sigs.k8s.io/controller-runtime") || !forbiddenInPipeline("customerloop.dev/customerloop/controllers") {
		t.Error("the check would let Kubernetes packages through")
	}
}

func forbiddenInPipeline(pkg string) bool {
	for _, prefix := range []string{"k8s.io/", "sigs.k8s.io/", "customerloop.dev/customerloop/api", "customerloop.dev/customerloop/controllers", "customerloop.dev/customerloop/cmd"} {
		if strings.HasPrefix(pkg, prefix) {
			return true
		}
	}
	return false
}

// planeImports is what each package under pipeline/ may import of the others: the
// contract (pipeline) imports none of them; connections build on the contract; the
// schema plane (ddl) on both; ingestion and feedback each on those three and never on
// each other; the dashboard reads through feedback; the customer channel reads
// feedback, validates plans as ingestion does, and draws its page with the dashboard's
// charts. Test helpers are imported by tests
// only.
var planeImports = map[string][]string{
	"pipeline":           {},
	"pipeline/connect":   {"pipeline"},
	"pipeline/ddl":       {"pipeline", "pipeline/connect"},
	"pipeline/ingest":    {"pipeline", "pipeline/connect", "pipeline/ddl"},
	"pipeline/feedback":  {"pipeline", "pipeline/connect", "pipeline/ddl"},
	"pipeline/dashboard": {"pipeline", "pipeline/connect", "pipeline/ddl", "pipeline/feedback"},
	"pipeline/customer":  {"pipeline", "pipeline/connect", "pipeline/ddl", "pipeline/feedback", "pipeline/ingest", "pipeline/dashboard"},
}

// TestPlanesImportOneWay fails when a package under pipeline/ imports a plane it must
// not (ingestion the feedback plane, say, or the contract anything below it), or when a
// package is added without a place in planeImports.
func TestPlanesImportOneWay(t *testing.T) {
	const module = "customerloop.dev/customerloop/"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, module+"pipeline/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module)
		allowed, known := planeImports[pkg]
		if !known {
			if !strings.Contains(pkg, "/internal/") && !strings.HasSuffix(pkg, "test") {
				t.Errorf("%s has no place in planeImports: say which planes it may import", pkg)
			}
			continue
		}
		seen++
		for _, d := range fields[1:] {
			dep, ours := strings.CutPrefix(d, module)
			if !ours {
				continue
			}
			if !slices.Contains(allowed, dep) {
				t.Errorf("%s imports %s; it may import only %v", pkg, dep, allowed)
			}
		}
	}
	if seen != len(planeImports) {
		t.Errorf("go list listed %d of the %d planes: the check reads too little", seen, len(planeImports))
	}
	if slices.Contains(planeImports["pipeline/ingest"], "pipeline/feedback") {
		t.Error("ingestion may not import the feedback plane")
	}
}

// TestNoLongHandWrittenFiles keeps every hand-written Go file of the module, tests and
// generated code aside, at 500 lines or fewer: a file past that holds more than one idea
// and is split by role.
func TestNoLongHandWrittenFiles(t *testing.T) {
	const limit = 500
	root := ".."
	seen := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "bin" || name == "artifacts" || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") || strings.HasPrefix(name, "zz_generated") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		seen++
		if n := bytes.Count(b, []byte("\n")); n > limit {
			t.Errorf("%s has %d lines; split it by role (at most %d)", path, n, limit)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 50 {
		t.Fatalf("read %d Go files under %s: not the module", seen, root)
	}
}
