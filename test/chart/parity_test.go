package chart

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// chartOnly are objects the chart renders with its default values and config/default
// deliberately does not have, with the reason.
var chartOnly = map[string]string{}

// kustomizeOnly are the converse.
var kustomizeOnly = map[string]string{
	"Namespace/" + namespace: "helm install --create-namespace makes the release namespace",
}

// TestKustomizeMatchesChart proves the two ways of installing give the same cluster: the
// chart with its default values, as release customerloop in customerloop-system, and
// config/default render the same objects with the same content (CRD, RBAC, the manager
// Deployment, its Service), apart from top-level labels and annotations (the chart's
// carry helm.sh/chart and the like).
func TestKustomizeMatchesChart(t *testing.T) {
	chart := index(decode(t, helmTemplate(t, nil, "--include-crds")))
	kust := index(decode(t, kustomize(t, "../../config/default")))

	for k := range chart {
		if _, ok := kust[k]; !ok && chartOnly[k] == "" {
			t.Errorf("%s is rendered by the chart but not by config/default", k)
		}
	}
	for k, a := range kust {
		b, ok := chart[k]
		if !ok {
			if kustomizeOnly[k] == "" {
				t.Errorf("%s is in config/default but not rendered by the chart", k)
			}
			continue
		}
		var diffs []string
		diffPaths(k, strip(b).Object, strip(a).Object, &diffs)
		if len(diffs) > 0 {
			t.Errorf("chart and config/default differ:\n  %s", strings.Join(diffs, "\n  "))
		}
	}
}

func index(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		m[key(o)] = o
	}
	return m
}

func strip(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	c.SetLabels(nil)
	c.SetAnnotations(nil)
	return c
}

// diffPaths records where chart (a) and kustomize (b) values differ, by field path.
func diffPaths(path string, a, b any, out *[]string) {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for k := range av {
			keys[k] = true
		}
		for k := range bv {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			diffPaths(path+"."+k, av[k], bv[k], out)
		}
		return
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			break
		}
		for i := range av {
			diffPaths(fmt.Sprintf("%s[%d]", path, i), av[i], bv[i], out)
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		*out = append(*out, fmt.Sprintf("%s: chart %v, config/default %v", path, a, b))
	}
}
