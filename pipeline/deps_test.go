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
