package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// testOnly reports whether a package belongs to tests rather than to the production
// binary: the development stack's control plane and broker, Go's testing packages and
// the test libraries.
func testOnly(pkg string) bool {
	for _, prefix := range []string{
		"sigs.k8s.io/controller-runtime/pkg/envtest",
		"github.com/twmb/franz-go/pkg/kfake",
		"github.com/onsi/",
		"github.com/stretchr/testify/",
	} {
		if strings.HasPrefix(pkg, prefix) {
			return true
		}
	}
	// Go's testing and testing/..., and the control plane envtest runs
	// (controller-runtime's internal/testing/...).
	return pkg == "testing" || strings.Contains(pkg, "testing/")
}

// goListDeps returns the packages a command links, built as the image builds it.
func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// The production binary links no test framework: envtest and kfake, which the local
// stack runs, stay in customerloop-dev. customerloop-dev links both on purpose, which
// shows that the check finds them.
func TestProductionBinaryLinksNoTestFramework(t *testing.T) {
	for _, c := range []struct {
		pkg  string
		want []string // test packages the command must link; nil: none at all
	}{
		{".", nil},
		{"../customerloop-dev", []string{"sigs.k8s.io/controller-runtime/pkg/envtest", "github.com/twmb/franz-go/pkg/kfake"}},
	} {
		deps := goListDeps(t, c.pkg)
		if !slices.Contains(deps, "customerloop.dev/customerloop/controllers") {
			t.Fatalf("go list -deps %s does not list the controllers: %d packages read", c.pkg, len(deps))
		}
		var found []string
		for _, d := range deps {
			if testOnly(d) {
				found = append(found, d)
			}
		}
		if c.want == nil {
			if len(found) > 0 {
				t.Errorf("%s links test code:\n  %s", c.pkg, strings.Join(found, "\n  "))
			}
			continue
		}
		for _, w := range c.want {
			if !slices.Contains(found, w) {
				t.Errorf("%s does not link %s: the check would miss it", c.pkg, w)
			}
		}
	}
}
