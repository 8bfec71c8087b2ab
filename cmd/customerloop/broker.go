package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"strconv"

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

func runBroker(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9092", "listen address; the broker binds loopback only")
	partitions := fs.Int("partitions", 6, "partitions of topics created on first use")
	dataDir := fs.String("data-dir", "", "keep topics and offsets in this directory across restarts (default: memory only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	port, err := portOf(*addr)
	if err != nil {
		return err
	}
	c, err := startBroker(port, *partitions, *dataDir)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("Kafka-protocol broker listening on %v; try: kcat -b %s -L\n", c.ListenAddrs(), *addr)
	<-ctx.Done()
	return nil
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
