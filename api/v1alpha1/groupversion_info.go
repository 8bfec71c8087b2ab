// Package v1alpha1 contains the CustomerLoop API, group loops.customerloop.dev.
// +kubebuilder:object:generate=true
// +groupName=loops.customerloop.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of the CustomerLoop API.
	GroupVersion = schema.GroupVersion{Group: "loops.customerloop.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the API types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the API types to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
