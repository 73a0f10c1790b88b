//! Fallback chains: model → ordered alternatives, any depth, never a cycle.

use std::collections::{HashMap, HashSet};

/// A cycle reachable from `start` in `graph`, as the path that closes it.
pub fn find_cycle(graph: &HashMap<String, Vec<String>>, start: &str) -> Option<Vec<String>> {
    fn visit(
        graph: &HashMap<String, Vec<String>>,
        node: &str,
        path: &mut Vec<String>,
        on_path: &mut HashSet<String>,
        done: &mut HashSet<String>,
    ) -> Option<Vec<String>> {
        if on_path.contains(node) {
            let from = path.iter().position(|n| n == node).unwrap_or(0);
            let mut cycle = path[from..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        on_path.insert(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, path, on_path, done) {
                return Some(cycle);
            }
        }
        on_path.remove(node);
        path.pop();
        None
    }
    visit(
        graph,
        start,
        &mut Vec::new(),
        &mut HashSet::new(),
        &mut HashSet::new(),
    )
}

/// `model` followed by its fallbacks, depth first, each model once.
pub fn chain(graph: &HashMap<String, Vec<String>>, model: &str) -> Vec<String> {
    fn walk(graph: &HashMap<String, Vec<String>>, node: &str, out: &mut Vec<String>) {
        if out.iter().any(|m| m == node) {
            return;
        }
        out.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            walk(graph, next, out);
        }
    }
    let mut out = Vec::new();
    walk(graph, model, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn chains_are_depth_first_without_repeats() {
        let g = graph(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"])]);
        assert_eq!(chain(&g, "a"), vec!["a", "b", "d", "c"]);
        assert_eq!(find_cycle(&g, "a"), None);
    }

    #[test]
    fn cycles_are_found_at_any_depth() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        assert_eq!(
            find_cycle(&g, "a"),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert!(find_cycle(&graph(&[("a", &["a"])]), "a").is_some());
    }
}
