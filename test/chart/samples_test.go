package chart

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestSamplesKustomizations proves `kubectl apply -k config/samples` applies only loops
// that run with Kafka and one ClickHouse server alone (no Secret reference, no
// spec.clickhouse.cluster), and that every sample file is applied by exactly one of the
// kustomizations under config/samples, so none is left out of the docs' commands.
func TestSamplesKustomizations(t *testing.T) {
	for _, o := range decode(t, kustomize(t, "../../config/samples")) {
		if refs := secretRefs(o.Object, ""); len(refs) > 0 {
			t.Errorf("%s is applied by config/samples but needs Secrets (%s); give it a directory of its own", key(o), strings.Join(refs, ", "))
		}
		if c, _, _ := unstructured.NestedString(o.Object, "spec", "clickhouse", "cluster"); c != "" {
			t.Errorf("%s is applied by config/samples but needs the ClickHouse cluster %q; give it a directory of its own", key(o), c)
		}
	}

	applied := map[string]int{}
	for _, dir := range sampleDirs {
		for _, o := range decode(t, kustomize(t, "../../config/"+dir)) {
			applied[o.GetName()]++
		}
	}
	files, err := filepath.Glob("../../config/samples/loops_*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("../../config/samples/*/loops_*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(files, more...) {
		for _, o := range readObjects(t, f) {
			if n := applied[o.GetName()]; n != 1 {
				t.Errorf("%s (%s) is applied by %d kustomizations of %v, want 1", key(o), f, n, sampleDirs)
			}
		}
	}

	// The check sees a Secret reference where the secure sample has them.
	secure := readObjects(t, "../../config/samples/secure/loops_v1alpha1_customerloop_secure.yaml")
	if refs := secretRefs(secure[0].Object, ""); !slices.Contains(refs, "spec.kafka.sasl.credentialsSecretRef") {
		t.Errorf("secretRefs found %v in the secure sample, want spec.kafka.sasl.credentialsSecretRef among them", refs)
	}
}

// secretRefs lists the paths of the fields named *SecretRef in an object.
func secretRefs(v any, path string) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			p := strings.TrimPrefix(path+"."+k, ".")
			if strings.HasSuffix(k, "SecretRef") {
				out = append(out, p)
			}
			out = append(out, secretRefs(x, p)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, secretRefs(x, path+"[]")...)
		}
	}
	slices.Sort(out)
	return out
}
