// Usage: this month's jobs, tokens and cost (GET usage: the calendar month, UTC).

import { request } from "./api.js";

const $ = (id) => document.getElementById(id);

export async function loadUsage() {
  const usage = await request("GET", "usage");
  const totals = usage.totals;
  $("usage-jobs").textContent = String(totals.jobs);
  $("usage-tokens").textContent = totals.totalTokens.toLocaleString("en");
  $("usage-cost").textContent = `$${totals.cost.toFixed(4)}`;
  const statuses = Object.entries(totals.byStatus).map(([status, count]) => {
    const li = document.createElement("li");
    li.textContent = `${status}: ${count}`;
    return li;
  });
  $("usage-status").replaceChildren(...statuses);
  const budget = usage.budget;
  const lines = [];
  if (budget && budget.tokens) lines.push(`${budget.tokens.left.toLocaleString("en")} of ${budget.tokens.limit.toLocaleString("en")} tokens left`);
  if (budget && budget.cost) lines.push(`$${budget.cost.left.toFixed(2)} of $${budget.cost.limit.toFixed(2)} left`);
  $("usage-budget").textContent = lines.length ? `This month's budget: ${lines.join("; ")}.` : "";
}
