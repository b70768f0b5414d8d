package render

import (
	"fmt"
	"slices"
	"strings"
	"text/template/parse"
)

// meterFunc is the metering function inserted by instrument. The parsed
// templates do not define it, so a template naming it fails to parse; only
// the per-execution clones do.
const meterFunc = "_metered"

// maxCallDepth bounds how deeply template calls nest. Execution recursion
// (and so stack) grows with it, and an email has no use for deep nesting.
const maxCallDepth = 64

// checkCalls refuses a set of templates (by name) that call an undefined
// template, call each other recursively, or nest calls deeper than
// maxCallDepth. Those are the executions whose depth the work budget does
// not bound: text/template itself allows 100000 nested calls.
func checkCalls(trees map[string]*parse.Tree) error {
	calls := map[string][]string{}
	for name, tr := range trees {
		walkNodes(tr.Root, func(n parse.Node) {
			if tn, ok := n.(*parse.TemplateNode); ok {
				calls[name] = append(calls[name], tn.Name)
			}
		})
	}
	const (
		visiting = -1
		unknown  = 0
	)
	depth := map[string]int{} // 1 + longest call chain below; visiting while on the stack
	var visit func(name string) error
	visit = func(name string) error {
		switch depth[name] {
		case visiting:
			return fmt.Errorf("template %q calls itself recursively", name)
		case unknown:
		default:
			return nil
		}
		depth[name] = visiting
		d := 1
		for _, callee := range calls[name] {
			if trees[callee] == nil {
				return fmt.Errorf("template %q calls undefined template %q", name, callee)
			}
			if err := visit(callee); err != nil {
				return err
			}
			d = max(d, depth[callee]+1)
		}
		if d > maxCallDepth {
			return fmt.Errorf("template calls nest deeper than %d", maxCallDepth)
		}
		depth[name] = d
		return nil
	}
	names := make([]string, 0, len(trees))
	for name := range trees {
		names = append(names, name)
	}
	slices.Sort(names) // deterministic error for several faults
	for _, name := range names {
		if err := visit(name); err != nil {
			return err
		}
	}
	return nil
}

// walkNodes calls f on every node of the list, depth first.
func walkNodes(l *parse.ListNode, f func(parse.Node)) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		f(n)
		switch n := n.(type) {
		case *parse.IfNode:
			walkNodes(n.List, f)
			walkNodes(n.ElseList, f)
		case *parse.WithNode:
			walkNodes(n.List, f)
			walkNodes(n.ElseList, f)
		case *parse.RangeNode:
			walkNodes(n.List, f)
			walkNodes(n.ElseList, f)
		case *parse.ListNode:
			walkNodes(n, f)
		}
	}
}

// instrument rewrites tr in place so that executing it charges its work to
// the meter (see the package doc):
//   - an empty text node starts the template and every range body, so each
//     template call and loop iteration makes one charged Write;
//   - every value that is not a literal and flows into a function argument,
//     into the next stage of a pipeline, or into a pipeline's result first
//     passes through meterFunc, which charges its size;
//   - index . "key" and index $ "key" become the field references .key and
//     $.key, so that a missing key fails like {{.key}} rather than yielding
//     "" as index does.
//
// Apart from index's missing keys, the rewrite does not change what a
// template renders. It runs before html/template escapes the trees, so the
// escapers html/template adds apply to the same values as without it.
func instrument(tr *parse.Tree) {
	if tr == nil || tr.Root == nil {
		return
	}
	instrumentList(tr.Root)
	tr.Root.Nodes = slices.Insert(tr.Root.Nodes, 0, stepNode(tr.Root.Pos))
}

func stepNode(pos parse.Pos) parse.Node {
	return &parse.TextNode{NodeType: parse.NodeText, Pos: pos, Text: []byte{}}
}

func instrumentList(l *parse.ListNode) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.ActionNode:
			instrumentPipe(n.Pipe)
		case *parse.IfNode:
			instrumentPipe(n.Pipe)
			instrumentList(n.List)
			instrumentList(n.ElseList)
		case *parse.WithNode:
			instrumentPipe(n.Pipe)
			instrumentList(n.List)
			instrumentList(n.ElseList)
		case *parse.RangeNode:
			instrumentPipe(n.Pipe)
			instrumentList(n.List)
			instrumentList(n.ElseList)
			n.List.Nodes = slices.Insert(n.List.Nodes, 0, stepNode(n.List.Pos))
		case *parse.TemplateNode:
			instrumentPipe(n.Pipe)
		case *parse.ListNode:
			instrumentList(n)
		}
	}
}

func instrumentPipe(p *parse.PipeNode) {
	if p == nil {
		return
	}
	cmds := make([]*parse.CommandNode, 0, 2*len(p.Cmds))
	for i, c := range p.Cmds {
		if i == 0 {
			// Only a first command has no final argument from a previous
			// stage, which would change index's arguments.
			indexToField(c)
		}
		for _, a := range c.Args {
			switch a := a.(type) {
			case *parse.PipeNode:
				instrumentPipe(a)
			case *parse.ChainNode:
				if pn, ok := a.Node.(*parse.PipeNode); ok {
					instrumentPipe(pn)
				}
			}
		}
		if _, isFunc := c.Args[0].(*parse.IdentifierNode); isFunc {
			for j := 1; j < len(c.Args); j++ {
				if carriesData(c.Args[j]) {
					c.Args[j] = metered(c.Args[j])
				}
			}
		} else if i == 0 && len(c.Args) == 1 && carriesData(c.Args[0]) {
			// A bare value ({{.name}}, {{$x}}): meter it as the stage's
			// result. With more arguments it is an attempted method call,
			// which fails on this data and is left to fail as written.
			c.Args = []parse.Node{meterIdent(c.Args[0].Position()), c.Args[0]}
		}
		if i > 0 && !isMeterCall(cmds[len(cmds)-1]) {
			cmds = append(cmds, &parse.CommandNode{
				NodeType: parse.NodeCommand,
				Pos:      c.Pos,
				Args:     []parse.Node{meterIdent(c.Pos)},
			})
		}
		cmds = append(cmds, c)
	}
	p.Cmds = cmds
}

// indexToField rewrites the command index . "key" (or index $ "key") to
// the field reference .key ($.key). A field name need not be an
// identifier: text/template looks it up in a map as given.
func indexToField(c *parse.CommandNode) {
	if len(c.Args) != 3 {
		return
	}
	if id, ok := c.Args[0].(*parse.IdentifierNode); !ok || id.Ident != "index" {
		return
	}
	key, ok := c.Args[2].(*parse.StringNode)
	if !ok {
		return
	}
	switch x := c.Args[1].(type) {
	case *parse.DotNode:
		c.Args = []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Pos: x.Pos, Ident: []string{key.Text}}}
	case *parse.VariableNode:
		if len(x.Ident) == 1 && x.Ident[0] == "$" {
			c.Args = []parse.Node{&parse.VariableNode{NodeType: parse.NodeVariable, Pos: x.Pos, Ident: []string{"$", key.Text}}}
		}
	}
}

// carriesData reports whether evaluating n can yield a value of any size:
// data, variables and results of other pipelines, unlike literals.
func carriesData(n parse.Node) bool {
	switch n.(type) {
	case *parse.FieldNode, *parse.VariableNode, *parse.ChainNode, *parse.PipeNode, *parse.DotNode:
		return true
	}
	return false
}

func meterIdent(pos parse.Pos) *parse.IdentifierNode {
	return parse.NewIdentifier(meterFunc).SetPos(pos)
}

func metered(n parse.Node) parse.Node {
	return &parse.PipeNode{
		NodeType: parse.NodePipe,
		Pos:      n.Position(),
		Cmds: []*parse.CommandNode{{
			NodeType: parse.NodeCommand,
			Pos:      n.Position(),
			Args:     []parse.Node{meterIdent(n.Position()), n},
		}},
	}
}

func isMeterCall(c *parse.CommandNode) bool {
	id, ok := c.Args[0].(*parse.IdentifierNode)
	return ok && id.Ident == meterFunc
}

// meterText removes instrumentation from template error messages, which
// quote the nodes they fail at: "index (_metered .x) 5" reads
// "index (.x) 5", "{{_metered .y}}" reads "{{.y}}".
var meterText = strings.NewReplacer(" | "+meterFunc, "", meterFunc+" ", "")

// cleanError is err with instrumentation removed from its message; errors.Is
// and errors.As see through it.
func cleanError(err error) error {
	msg := err.Error()
	if clean := meterText.Replace(msg); clean != msg {
		return &cleanedError{msg: clean, err: err}
	}
	return err
}

type cleanedError struct {
	msg string
	err error
}

func (e *cleanedError) Error() string { return e.msg }
func (e *cleanedError) Unwrap() error { return e.err }
