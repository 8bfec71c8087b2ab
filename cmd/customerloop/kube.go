package main

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
)

// kubeFlags are kubectl's flags for reaching a cluster (--kubeconfig, --context, -n,
// ...), with kubectl's meaning: -n defaults to the namespace of the kubeconfig's
// current context.
type kubeFlags struct {
	config *genericclioptions.ConfigFlags
	// clickhouse, when set, replaces the loop's ClickHouse address (a port-forward).
	clickhouse string
}

// newKubeConfigFlags are the flags of every command that reads a loop. They are the
// root's persistent flags, so that they may stand before the command too, as
// `customerloop -n team-a status acme`.
func newKubeConfigFlags(root *cobra.Command) *genericclioptions.ConfigFlags {
	c := genericclioptions.NewConfigFlags(true)
	c.AddFlags(root.PersistentFlags())
	return c
}

func addKubeFlags(config *genericclioptions.ConfigFlags) *kubeFlags {
	return &kubeFlags{config: config}
}

// addClickHouseFlag adds --clickhouse, for commands that read the loop's ClickHouse.
func (k *kubeFlags) addClickHouseFlag(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.clickhouse, "clickhouse", "", "read ClickHouse at this host:port instead of the loop's address (e.g. through a port-forward)")
}

func (k *kubeFlags) namespace() (string, error) {
	ns, _, err := k.config.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("reading the namespace from the kubeconfig: %w", err)
	}
	return ns, nil
}

func (k *kubeFlags) client() (client.Client, error) {
	restCfg, err := k.config.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("finding the cluster: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := loopsv1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(restCfg, client.Options{Scheme: scheme})
}

// loop reads a CustomerLoop of the chosen namespace.
func (k *kubeFlags) loop(ctx context.Context, name string) (client.Client, *loopsv1alpha1.CustomerLoop, error) {
	ns, err := k.namespace()
	if err != nil {
		return nil, nil, err
	}
	c, err := k.client()
	if err != nil {
		return nil, nil, err
	}
	loop := &loopsv1alpha1.CustomerLoop{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, loop); err != nil {
		return nil, nil, fmt.Errorf("reading CustomerLoop %s/%s: %w", ns, name, err)
	}
	return c, loop, nil
}

// loopConfig reads a CustomerLoop and renders its pipeline config as the controller
// does, credentials from its Secrets included: the caller reads the loop's data with
// the user's own access to those Secrets.
func (k *kubeFlags) loopConfig(ctx context.Context, name string) (*loopsv1alpha1.CustomerLoop, pipeline.Config, error) {
	c, loop, err := k.loop(ctx, name)
	if err != nil {
		return nil, pipeline.Config{}, err
	}
	cfg, err := k.renderConfig(ctx, c, loop)
	return loop, cfg, err
}

func (k *kubeFlags) renderConfig(ctx context.Context, c client.Client, loop *loopsv1alpha1.CustomerLoop) (pipeline.Config, error) {
	cfg, err := controllers.LoopConfig(ctx, c, loop)
	if err != nil {
		return pipeline.Config{}, fmt.Errorf("CustomerLoop %s/%s: %w", loop.Namespace, loop.Name, err)
	}
	if k.clickhouse != "" {
		overrideAddr(&cfg.ClickHouse, k.clickhouse)
	}
	return cfg, nil
}

// overrideAddr points the connection at addr alone, such as a port-forward. Over TLS the
// server's certificate is still checked against the loop's own server name (the host of
// its first address when the loop sets none), not against the forward's.
func overrideAddr(ch *pipeline.ClickHouseConfig, addr string) {
	if t := ch.TLS; t != nil && t.ServerName == "" {
		tc := *t
		if host, _, err := net.SplitHostPort(ch.Addr); err == nil {
			tc.ServerName = host
		}
		ch.TLS = &tc
	}
	ch.Addr, ch.Failover = addr, nil
}

func (k *kubeFlags) openClickHouse(ctx context.Context, cfg pipeline.Config) (driver.Conn, error) {
	conn, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, fmt.Errorf("ClickHouse at %s: %w", cfg.ClickHouse.Addr, err)
	}
	return conn, nil
}

// completeLoops completes the first argument with the names of the namespace's loops.
func (k *kubeFlags) completeLoops(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ns, err := k.namespace()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	c, err := k.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var list loopsv1alpha1.CustomerLoopList
	if err := c.List(cmd.Context(), &list, client.InNamespace(ns)); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for _, l := range list.Items {
		if strings.HasPrefix(l.Name, toComplete) {
			names = append(names, l.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// completeStreams completes --stream with the streams of the loop named in args.
func (k *kubeFlags) completeStreams(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	_, loop, err := k.loop(cmd.Context(), args[0])
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for _, s := range loop.Spec.Streams {
		if strings.HasPrefix(s.Name, toComplete) {
			names = append(names, s.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// streamNamed returns the loop's stream of that name.
func streamNamed(cfg pipeline.Config, name string) (pipeline.StreamConfig, error) {
	var names []string
	for _, s := range cfg.Streams {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return pipeline.StreamConfig{}, fmt.Errorf("the loop has no stream %q (it has %s)", name, strings.Join(names, ", "))
}
