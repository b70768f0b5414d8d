package render

import (
	"slices"
	"text/template/parse"
)

// collectVars adds to seen the variables the trees reference, by the rule
// documented on Template.Vars. Every tree, the main one and each
// {{define}}d one, starts with dot and $ being the data map.
func collectVars(trees []*parse.Tree, seen map[string]bool) {
	for _, tr := range trees {
		if tr != nil {
			varsInList(tr.Root, true, seen)
		}
	}
}

// varsInList walks l; top reports whether dot is the data map there.
func varsInList(l *parse.ListNode, top bool, seen map[string]bool) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.ActionNode:
			varsInPipe(n.Pipe, top, seen)
		case *parse.IfNode:
			varsInPipe(n.Pipe, top, seen)
			varsInList(n.List, top, seen)
			varsInList(n.ElseList, top, seen)
		case *parse.WithNode: // the body's dot is the pipeline's value
			varsInPipe(n.Pipe, top, seen)
			varsInList(n.List, false, seen)
			varsInList(n.ElseList, top, seen)
		case *parse.RangeNode: // the body's dot is each element
			varsInPipe(n.Pipe, top, seen)
			varsInList(n.List, false, seen)
			varsInList(n.ElseList, top, seen)
		case *parse.TemplateNode:
			varsInPipe(n.Pipe, top, seen)
		case *parse.ListNode:
			varsInList(n, top, seen)
		}
	}
}

func varsInPipe(p *parse.PipeNode, top bool, seen map[string]bool) {
	if p == nil {
		return
	}
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			varsInArg(a, top, seen)
		}
	}
}

func varsInArg(n parse.Node, top bool, seen map[string]bool) {
	switch n := n.(type) {
	case *parse.FieldNode:
		if top {
			seen[n.Ident[0]] = true
		}
	case *parse.VariableNode:
		// $ stays the data map inside with and range bodies.
		if n.Ident[0] == "$" && len(n.Ident) > 1 {
			seen[n.Ident[1]] = true
		}
	case *parse.ChainNode:
		varsInArg(n.Node, top, seen)
	case *parse.PipeNode:
		varsInPipe(n, top, seen)
	}
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
