package pipeline

import (
	"os/exec"
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
// each other; the dashboard reads through feedback. Test helpers are imported by tests
// only.
var planeImports = map[string][]string{
	"pipeline":           {},
	"pipeline/connect":   {"pipeline"},
	"pipeline/ddl":       {"pipeline", "pipeline/connect"},
	"pipeline/ingest":    {"pipeline", "pipeline/connect", "pipeline/ddl"},
	"pipeline/feedback":  {"pipeline", "pipeline/connect", "pipeline/ddl"},
	"pipeline/dashboard": {"pipeline", "pipeline/connect", "pipeline/ddl", "pipeline/feedback"},
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
