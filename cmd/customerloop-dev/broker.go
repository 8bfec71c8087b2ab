package main

import (
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kfake"
)

// startBroker runs franz-go's kfake, a Kafka-protocol broker, on 127.0.0.1:port. Topics
// are created on first use with the given number of partitions.
func startBroker(port, partitions int, dataDir string) (*kfake.Cluster, error) {
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(partitions),
		kfake.ClusterID("customerloop-dev"),
	}
	if dataDir != "" {
		opts = append(opts, kfake.DataDir(dataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("starting the broker on 127.0.0.1:%d: %w (is the port taken?)", port, err)
	}
	return c, nil
}

func newBrokerCommand() *cobra.Command {
	var (
		addr, dataDir string
		partitions    int
	)
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run a local Kafka-protocol broker for development",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			port, err := portOf(addr)
			if err != nil {
				return err
			}
			c, err := startBroker(port, partitions, dataDir)
			if err != nil {
				return err
			}
			defer c.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "Kafka-protocol broker listening on %v; try: kcat -b %s -L\n", c.ListenAddrs(), addr)
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9092", "listen address; the broker binds loopback only")
	cmd.Flags().IntVar(&partitions, "partitions", 6, "partitions of topics created on first use")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "keep topics and offsets in this directory across restarts (default: memory only)")
	return cmd
}

func portOf(addr string) (int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("%q: want host:port", addr)
	}
	if host != "" && host != "127.0.0.1" && host != "localhost" {
		return 0, fmt.Errorf("%q: the local broker binds 127.0.0.1 only", addr)
	}
	return strconv.Atoi(p)
}
