package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/customer"
)

func newTokenCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint and revoke customers' short-lived tokens of a loop's customer channel",
		Long: `A loop's customer channel (spec.customerChannel) accepts signed tokens when its tokens
Secret holds a signing-key. "token mint" signs one for a customer, valid for at most 24
hours, without changing the Secret; "token revoke" adds a token's id to the Secret's
revoked list, which counts at the next request. See docs/customers.md.`,
	}
	cmd.AddCommand(newTokenMintCommand(config), newTokenRevokeCommand(config))
	return cmd
}

// channelSecret returns the loop's tokens Secret.
func channelSecret(cmd *cobra.Command, k *kubeFlags, name string) (client.Client, *loopsv1alpha1.CustomerLoop, *corev1.Secret, error) {
	c, loop, err := k.loop(cmd.Context(), name)
	if err != nil {
		return nil, nil, nil, err
	}
	ch := loop.Spec.CustomerChannel
	if ch == nil {
		return nil, nil, nil, fmt.Errorf("CustomerLoop %s/%s has no spec.customerChannel", loop.Namespace, loop.Name)
	}
	secret := &corev1.Secret{}
	if err := c.Get(cmd.Context(), types.NamespacedName{Namespace: loop.Namespace, Name: ch.TokensSecretRef.Name}, secret); err != nil {
		return nil, nil, nil, fmt.Errorf("reading the tokens Secret of %s/%s: %w", loop.Namespace, loop.Name, err)
	}
	return c, loop, secret, nil
}

func newTokenMintCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	var (
		ttl    time.Duration
		output string
	)
	cmd := &cobra.Command{
		Use:   "mint LOOP CUSTOMER",
		Short: "Sign a short-lived token for one customer of the loop's customer channel",
		Example: `  customerloop token mint acme acme-01 -n default --ttl 2h
  customerloop token mint acme acme-01 -o json`,
		Args: cobra.ExactArgs(2),
	}
	k := addKubeFlags(config)
	cmd.ValidArgsFunction = k.completeLoops
	cmd.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid, at most 24h")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json (default: the token, then its id and expiry on stderr)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if output != "" && output != "json" {
			return fmt.Errorf("--output %q: want json, or nothing for the token alone", output)
		}
		if ttl <= 0 || ttl > customer.MaxSignedTTL {
			return fmt.Errorf("--ttl %s: want more than 0 and at most %s", ttl, customer.MaxSignedTTL)
		}
		c, loop, secret, err := channelSecret(cmd, k, args[0])
		if err != nil {
			return err
		}
		topic, err := statementTopic(cmd.Context(), c, loop, args[1])
		if err != nil {
			return err
		}
		key := secret.Data[customer.KeySigningKey]
		if len(key) == 0 {
			return fmt.Errorf("the tokens Secret %s/%s has no %s: signed tokens are off for %s", secret.Namespace, secret.Name, customer.KeySigningKey, loop.Name)
		}
		now := time.Now()
		token, id, err := customer.Mint(key, loop.Namespace+"/"+loop.Name, args[1], ttl, now)
		if err != nil {
			return err
		}
		expires := now.Add(ttl).UTC().Truncate(time.Second)
		if output == "json" {
			enc := json.NewEncoder(cmd.OutOrStdout())
			out := map[string]any{"token": token, "id": id, "customer": args[1], "expires": expires}
			if topic != "" {
				out["statementTopic"] = topic
			}
			return enc.Encode(out)
		}
		fmt.Fprintln(cmd.OutOrStdout(), token)
		fmt.Fprintf(cmd.ErrOrStderr(), "token id %s for %s, valid until %s (revoke: customerloop token revoke %s %s)\n",
			id, args[1], expires.Format(time.RFC3339), loop.Name, id)
		if topic != "" {
			fmt.Fprintf(cmd.ErrOrStderr(), "their statements and receipts: topic %s\n", topic)
		}
		return nil
	}
	return cmd
}

// statementTopic is the topic of the customer's statements when the loop publishes them
// to a topic per customer or one keyed topic, "" otherwise. On a loop whose usage stream
// hashes customer ids, the name holds the stored id, derived with the loop's key.
func statementTopic(ctx context.Context, c client.Client, loop *loopsv1alpha1.CustomerLoop, id string) (string, error) {
	ch := loop.Spec.CustomerChannel
	if ch == nil || ch.Statements == nil || loop.Spec.Feedback == nil {
		return "", nil
	}
	stored := id
	for _, s := range loop.Spec.Streams {
		if s.Name != loop.Spec.Feedback.UsageStream || s.PII == nil || s.PII.CustomerID != loopsv1alpha1.PIIHashOnly(loopsv1alpha1.PIIHash) || loop.Spec.Privacy == nil {
			continue
		}
		ref := loop.Spec.Privacy.HMACKeySecretRef
		var sec corev1.Secret
		if err := c.Get(ctx, client.ObjectKey{Namespace: loop.Namespace, Name: ref.Name}, &sec); err != nil {
			return "", fmt.Errorf("reading the loop's HMAC key to name the customer's statement topic: %w", err)
		}
		stored = pipeline.HashPII(sec.Data[ref.GetKey()], []byte(id))
	}
	return pipeline.StatementConfig{Topic: ch.Statements.Topic}.TopicFor(stored)
}

func newTokenRevokeCommand(config *genericclioptions.ConfigFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "revoke LOOP TOKEN-ID",
		Short:   "Refuse a signed token before it expires: add its id to the tokens Secret's revoked list",
		Example: `  customerloop token revoke acme 3f6c0a9e5b1d47c28e9a7b6c5d4e3f21 -n default`,
		Args:    cobra.ExactArgs(2),
	}
	k := addKubeFlags(config)
	cmd.ValidArgsFunction = k.completeLoops
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, _, secret, err := channelSecret(cmd, k, args[0])
		if err != nil {
			return err
		}
		var revoked []string
		if b := secret.Data[customer.KeyRevoked]; len(b) > 0 {
			if err := json.Unmarshal(b, &revoked); err != nil {
				return fmt.Errorf("the revoked list of %s/%s does not parse (every signed token is refused until it does): %w", secret.Namespace, secret.Name, err)
			}
		}
		if slices.Contains(revoked, args[1]) {
			fmt.Fprintf(cmd.OutOrStdout(), "token %s was already revoked\n", args[1])
			return nil
		}
		revoked = append(revoked, args[1])
		b, _ := json.Marshal(revoked)
		patch := client.MergeFrom(secret.DeepCopy())
		if secret.Data == nil {
			secret.Data = map[string][]byte{}
		}
		secret.Data[customer.KeyRevoked] = b
		if err := c.Patch(cmd.Context(), secret, patch); err != nil {
			return fmt.Errorf("updating %s/%s: %w", secret.Namespace, secret.Name, err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked: refused from the next request\n", args[1])
		return nil
	}
	return cmd
}
