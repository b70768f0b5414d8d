// Package shaping limits how hard Postflow pushes each receiving
// organisation, for every worker at once: how many messages it starts per
// unit of time, how many SMTP sessions it holds open, how many messages a
// session carries and how many recipients a transaction names.
//
// # Destinations
//
// Limits apply to a Destination: a named group of recipient domains that
// share one receiver. A Config maps a recipient domain and its MX hosts to
// one: a rule matches by recipient domain (exactly) or by MX host suffix, so
// every domain whose MX ends in .google.com shares the "google"
// destination; a domain no rule matches is a destination of its own, named
// after the domain, with the defaults (see Config.Match).
//
// # Rate, connections, adaptive
//
// The message rate is a GCRA (generic cell rate algorithm) throttle: one
// timestamp per destination, the theoretical arrival time, allows Burst
// messages back to back and then one per Rate.Interval. A job that cannot
// go now is not refused but given the next free slot (Limiter.Reserve):
// the worker hands it back to the queue until then, and the job is granted
// when it returns, so a throttled destination costs one fetch per message
// sent, not a fetch per poll, and never holds up another destination.
//
// Connections are a counting semaphore of leases that expire unless
// renewed (Limiter.Acquire, LeasedDialer), so the slots of a worker that
// dies come back by themselves.
//
// Throttling replies (421, 4.7.x rate limits, provider texts) cut the
// destination's rate by Adaptive.Cut, at most once per Adaptive.Debounce;
// after Adaptive.Hold the rate recovers by Adaptive.Step every
// Adaptive.StepEvery. The recovered factor is computed when read
// (Adaptive.Factor), so no timer runs anywhere.
//
// # Implementations
//
// The Redis limiter shares the state between workers through Lua scripts,
// one round trip per decision. Memory runs the same algorithm in process:
// it is the embedded single-process default, and the fallback a worker
// applies, with the limits divided among the live workers, while Redis is
// unreachable, so that an outage never means no limit.
//
// Slots are scheduled per rate epoch (Adaptive.Epoch): a cut or a recovery
// step starts a new one, voiding the slots reserved under the old rate, so
// that every change of rate applies at once.
//
// # Configuration file
//
// `postflow serve --shaping FILE` reads YAML; `postflow shaping check FILE`
// validates it and prints Config.Describe:
//
//	builtin: true              # false: leave out the shipped providers
//	defaults:                  # every key optional
//	  rate: "100/s"            # N/s, N/m, N/h, N/d or "unlimited"
//	  burst: 1                 # messages allowed back to back (0 means 1)
//	  connections: 10          # concurrent sessions; 0 means no limit
//	  messages_per_connection: 100     # 0: the SMTP client's default
//	  recipients_per_transaction: 50   # 0: the API's own cap
//	destinations:
//	  - name: google           # [a-z0-9._-], unique; keys shared state
//	    mx_suffixes: [".google.com", ".googlemail.com"]
//	    rate: "20/s"
//	    connections: 5
//	  - name: example
//	    domains: ["example.test"]      # exact, case-insensitive
//	    rate: "20/s"
//	    connections: 3
//
// A destination needs domains, mx_suffixes or both; the limit keys it does
// not set come from defaults. Unknown keys are errors, and every problem is
// reported at once, naming destinations[i].
//
// The file is merged over the shipped provider defaults (providers.yaml,
// Builtin): keys set under its defaults replace those of the builtin
// defaults; its destinations come before the builtin ones, and one named
// like a builtin destination replaces it. `builtin: false` drops the
// builtin destinations but keeps the builtin defaults for unset keys.
// Without a file, Builtin applies.
//
// A domain rule beats any suffix rule; among suffix rules the longest
// matching suffix wins, then the rule listed first. To change a shipped
// provider, reuse its name; a destination of another name listing the same
// suffix takes the matching too, and Describe shows the builtin one as
// shadowed.
package shaping
